// Package audit writes and verifies mesh's authorization audit log: one
// JSON record per line, hash-chained so that a deleted, reordered or edited
// line is detectable.
//
// The chain: every record carries seq (1, 2, 3, ... within a stream),
// prevHash (the previous record's hash; 64 zeros for the first), and hash,
// the SHA-256, in hex, of the line's own bytes up to its hash field: the
// line is written as
//
//	{...every other field...,"hash":"<64 hex digits>"}
//
// and hash = SHA-256 of the line with `,"hash":"<64 hex>"}` replaced by
// `}`. Verifying needs no JSON canonicalisation: any language can cut the
// suffix and hash the bytes.
//
// The writer never blocks its caller (the proxy's data path). When its
// buffer is full a record is dropped and counted; the next record written
// is preceded by a "gap" record in the chain saying how many were lost.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Type marks audit records.
const Type = "mesh.audit.v1"

// Genesis is the prevHash of a stream's first record.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Record is one audited decision. The JSON field names are the schema.
type Record struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"` // "decision", or "gap"
	Decision string    `json:"decision,omitempty"`
	DryRun   bool      `json:"dryRun"`
	Policy   string    `json:"policy,omitempty"`
	Rule     string    `json:"rule,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Audit    string    `json:"audit,omitempty"` // the AUDIT policy that matched

	SourceIdentity string `json:"source.identity,omitempty"`
	SourceIP       string `json:"source.ip,omitempty"`

	DestinationNamespace string `json:"destination.namespace,omitempty"`
	DestinationPod       string `json:"destination.pod,omitempty"`
	DestinationPort      uint16 `json:"destination.port,omitempty"`

	Protocol   string `json:"protocol,omitempty"`
	HTTPMethod string `json:"http.method,omitempty"`
	HTTPPath   string `json:"http.path,omitempty"`
	HTTPStatus int    `json:"http.status,omitempty"`

	// Dropped is, in a gap record, how many records were lost.
	Dropped int64 `json:"dropped,omitempty"`
}

// line is what is hashed: the record with the chain fields.
type line struct {
	Type   string `json:"type"`
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
	Record
	PrevHash string `json:"prevHash"`
}

// Config configures a Writer.
type Config struct {
	// Out receives the lines. Required.
	Out io.Writer
	// Stream names this chain (the proxy's pod and start time), so records
	// of several files can be told apart. Required.
	Stream string
	// Buffer is how many records may wait for the writer. Zero means 4096.
	Buffer int
	// Registerer receives the writer's metrics. Zero means none.
	Registerer prometheus.Registerer
}

// Writer appends records to a chain without blocking its callers.
type Writer struct {
	cfg     Config
	ch      chan Record
	dropped atomic.Int64
	written prometheus.Counter
	lost    prometheus.Counter
}

// New validates cfg and returns a writer; Run writes.
func New(cfg Config) (*Writer, error) {
	if cfg.Out == nil {
		return nil, errors.New("audit: Config.Out is required")
	}
	if cfg.Stream == "" {
		return nil, errors.New("audit: Config.Stream is required")
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 4096
	}
	w := &Writer{
		cfg: cfg, ch: make(chan Record, cfg.Buffer),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_proxy_audit_records_total", Help: "Audit records written."}),
		lost:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_proxy_audit_dropped_total", Help: "Audit records dropped because the writer fell behind."}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.written, w.lost} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("audit: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Write queues a record. It never blocks: when the buffer is full the
// record is dropped, counted, and later recorded as a gap.
func (w *Writer) Write(r Record) {
	select {
	case w.ch <- r:
	default:
		w.dropped.Add(1)
		w.lost.Inc()
	}
}

// Run writes queued records until ctx ends, then writes what is still
// queued and returns.
func (w *Writer) Run(ctx context.Context) error {
	bw := bufio.NewWriter(w.cfg.Out)
	var seq uint64
	prev := Genesis
	emit := func(r Record) error {
		seq++
		b, h, err := encode(line{Type: Type, Stream: w.cfg.Stream, Seq: seq, Record: r, PrevHash: prev})
		if err != nil {
			return err
		}
		prev = h
		if _, err := bw.Write(b); err != nil {
			return fmt.Errorf("audit: write: %w", err)
		}
		w.written.Inc()
		return nil
	}
	handle := func(r Record) error {
		if n := w.dropped.Swap(0); n > 0 {
			if err := emit(Record{Time: r.Time, Event: "gap", Dropped: n}); err != nil {
				return err
			}
		}
		if r.Event == "" {
			r.Event = "decision"
		}
		return emit(r)
	}
	for {
		select {
		case r := <-w.ch:
			if err := handle(r); err != nil {
				return err
			}
			// Flush when the queue is drained, so a record reaches the file
			// promptly without a syscall per record under load.
			if len(w.ch) == 0 {
				if err := bw.Flush(); err != nil {
					return fmt.Errorf("audit: flush: %w", err)
				}
			}
		case <-ctx.Done():
			for {
				select {
				case r := <-w.ch:
					if err := handle(r); err != nil {
						return err
					}
				default:
					if n := w.dropped.Swap(0); n > 0 {
						if err := emit(Record{Time: time.Now().UTC(), Event: "gap", Dropped: n}); err != nil {
							return err
						}
					}
					return bw.Flush()
				}
			}
		}
	}
}

// encode renders a line and its hash.
func encode(l line) ([]byte, string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(l); err != nil {
		return nil, "", fmt.Errorf("audit: encode: %w", err)
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	sum := sha256.Sum256(body)
	h := hex.EncodeToString(sum[:])
	out := make([]byte, 0, len(body)+len(`,"hash":""}`)+len(h)+1)
	out = append(out, body[:len(body)-1]...)
	out = append(out, `,"hash":"`...)
	out = append(out, h...)
	out = append(out, "\"}\n"...)
	return out, h, nil
}

// VerifyError says where and why a log failed verification.
type VerifyError struct {
	Line   int // 1-based line number
	Reason string
}

func (e *VerifyError) Error() string { return fmt.Sprintf("audit: line %d: %s", e.Line, e.Reason) }

// Result summarises a verified log.
type Result struct {
	Records int   // lines verified
	Streams int   // chains in the file
	Gaps    int   // gap records
	Dropped int64 // records the gaps account for
}

// Verify checks every line of r: its hash, its link to the previous record
// of its stream, and its sequence number. It returns the first failure. A
// log cut short at its end verifies: a chain cannot show what came after
// its last record (ship logs off the node to cover that).
func Verify(r io.Reader) (Result, error) {
	var res Result
	type state struct {
		seq  uint64
		hash string
	}
	streams := map[string]*state{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		raw := sc.Bytes()
		if len(bytes.TrimSpace(raw)) == 0 {
			return res, &VerifyError{n, "empty line"}
		}
		const suffixLen = len(`,"hash":"`) + 64 + len(`"}`)
		if len(raw) < suffixLen+2 || !bytes.HasPrefix(raw[len(raw)-suffixLen:], []byte(`,"hash":"`)) || !bytes.HasSuffix(raw, []byte(`"}`)) {
			return res, &VerifyError{n, "no hash at the end of the line"}
		}
		claimed := string(raw[len(raw)-suffixLen+len(`,"hash":"`) : len(raw)-2])
		body := append(append([]byte(nil), raw[:len(raw)-suffixLen]...), '}')
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != claimed {
			return res, &VerifyError{n, "hash mismatch: the line was edited"}
		}
		var l line
		if err := json.Unmarshal(raw, &l); err != nil {
			return res, &VerifyError{n, fmt.Sprintf("not a JSON record: %v", err)}
		}
		if l.Type != Type {
			return res, &VerifyError{n, fmt.Sprintf("type %q, want %q", l.Type, Type)}
		}
		st := streams[l.Stream]
		if st == nil {
			if l.Seq != 1 || l.PrevHash != Genesis {
				return res, &VerifyError{n, fmt.Sprintf("stream %q starts at seq %d, not 1: records before it were deleted", l.Stream, l.Seq)}
			}
			st = &state{}
			streams[l.Stream] = st
		} else {
			switch {
			case l.Seq != st.seq+1:
				return res, &VerifyError{n, fmt.Sprintf("seq %d follows seq %d in stream %q: records were deleted or reordered", l.Seq, st.seq, l.Stream)}
			case l.PrevHash != st.hash:
				return res, &VerifyError{n, fmt.Sprintf("prevHash does not match the hash of seq %d: the chain is broken", st.seq)}
			}
		}
		st.seq, st.hash = l.Seq, claimed
		res.Records++
		if l.Event == "gap" {
			res.Gaps++
			res.Dropped += l.Dropped
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("audit: read: %w", err)
	}
	res.Streams = len(streams)
	return res, nil
}
