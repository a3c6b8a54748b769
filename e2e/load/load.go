// Package load is what mesh-e2e-echo's load modes (grpc-load, http-load)
// print: the client's own count of a run, as one JSON object, which the
// e2e tests compare with what the mesh did and counted. The binary and
// the tests share this one type, so neither can drift from the other.
package load

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Summary is a load run's count of what happened.
type Summary struct {
	Calls  int `json:"calls"`
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	// Hosts counts answers by the pod that answered; FirstSeen is when
	// each first answered (Unix milliseconds).
	Hosts     map[string]int   `json:"hosts"`
	FirstSeen map[string]int64 `json:"firstSeen"`
	// Codes counts gRPC status codes; Statuses HTTP statuses ("error"
	// for a request that got no response).
	Codes    map[string]int `json:"codes,omitempty"`
	Statuses map[string]int `json:"statuses,omitempty"`
	// Errors are the first few failures, for the test's log.
	Errors []string `json:"errors,omitempty"`
}

// Parse reads the one summary a load run printed. Unknown fields and
// anything after the object are refused: a test reading a summary the
// binary no longer writes that way should fail, not see zeros.
func Parse(out []byte) (Summary, error) {
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	var s Summary
	if err := dec.Decode(&s); err != nil {
		return Summary{}, fmt.Errorf("load: summary %q: %w", clip(out), err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Summary{}, fmt.Errorf("load: summary %q: more than one JSON value", clip(out))
	}
	// Every call is accounted for: a run cut short says so in Failed.
	if s.OK < 0 || s.Failed < 0 || s.OK+s.Failed != s.Calls {
		return Summary{}, fmt.Errorf("load: summary %q: %d ok and %d failed of %d calls", clip(out), s.OK, s.Failed, s.Calls)
	}
	return s, nil
}

// clip keeps an error readable when the output is long.
func clip(out []byte) []byte {
	if len(out) > 200 {
		return append(out[:200:200], "..."...)
	}
	return out
}
