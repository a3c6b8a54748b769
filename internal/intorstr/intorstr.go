// Package intorstr is a value that is an integer or a string, such as a
// port given by number or by name, with the JSON form of apimachinery's
// intstr.IntOrString: a JSON string is a string, anything else decodes as
// an int32. intorstr_test.go checks the two agree; this one does not link
// apimachinery, which the proxy must not (docs/benchmarks.md).
package intorstr

import (
	"encoding/json"
	"errors"
	"strconv"
)

// Type says which of the two a value holds.
type Type int64

// Types, numbered as intstr's.
const (
	Int Type = iota
	String
)

// IntOrString is an int32 or a string. The zero value is the integer 0.
type IntOrString struct {
	Type   Type
	IntVal int32
	StrVal string
}

// FromInt32 is the integer i.
func FromInt32(i int32) IntOrString { return IntOrString{Type: Int, IntVal: i} }

// FromInt is the integer i, truncated to 32 bits as intstr.FromInt does.
func FromInt(i int) IntOrString { return IntOrString{Type: Int, IntVal: int32(i)} }

// FromString is the string s.
func FromString(s string) IntOrString { return IntOrString{Type: String, StrVal: s} }

// String is the string, or the integer in decimal.
func (v IntOrString) String() string {
	if v.Type == String {
		return v.StrVal
	}
	return strconv.Itoa(int(v.IntVal))
}

// UnmarshalJSON reads a JSON string as a string and anything else as an
// int32 (null leaves the integer 0), as intstr does.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.Type = String
		return json.Unmarshal(b, &v.StrVal)
	}
	v.Type = Int
	return json.Unmarshal(b, &v.IntVal)
}

// MarshalJSON writes the integer or the string.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	switch v.Type {
	case Int:
		return json.Marshal(v.IntVal)
	case String:
		return json.Marshal(v.StrVal)
	}
	return nil, errors.New("intorstr: neither an integer nor a string")
}
