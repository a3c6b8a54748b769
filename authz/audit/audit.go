// Package audit writes and verifies mesh's authorization audit log: one
// JSON record per line, hash-chained so that a deleted, reordered or edited
// line is detectable, and anchored by checkpoints signed with the proxy's
// SVID key so that a forger who recomputes every hash is detected too.
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
// A hash chain has no key: anyone who can edit the file can recompute it.
// So the writer signs the chain head with the proxy's SVID key every
// CheckpointEvery records, every CheckpointInterval, and at shutdown, and
// writes the signature as a "checkpoint" record in the chain (see
// checkpoint.go for the signed message). Verify checks each checkpoint
// against the trust bundle and the stream's identity.
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
	"log/slog"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Type marks audit records.
const Type = "mesh.audit.v1"

// Genesis is the prevHash of a stream's first record.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Events. Callers write EventDecision (the default) and EventRefused; the
// writer alone writes EventGap and EventCheckpoint.
const (
	EventDecision   = "decision"
	EventRefused    = "refused"
	EventGap        = "gap"
	EventCheckpoint = "checkpoint"
)

// Record is one audited decision. The JSON field names are the schema.
type Record struct {
	// Time of the decision. Zero means when the writer takes the record.
	Time time.Time `json:"time"`
	// Event is "decision" (empty means decision), or "refused": a
	// connection refused before any policy applied (plaintext in strict
	// mode, a failed handshake, a peer with the wrong identity). "gap" and
	// "checkpoint" are the writer's own.
	Event    string `json:"event"`
	Decision string `json:"decision,omitempty"`
	DryRun   bool   `json:"dryRun"`
	Policy   string `json:"policy,omitempty"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Detail says more about a refusal than its one-word reason.
	Detail string `json:"detail,omitempty"`
	Audit  string `json:"audit,omitempty"` // the AUDIT policy that matched
	// Direction is "outbound" for a refusal by the proxy of a connection
	// its own workload made; empty (inbound) otherwise.
	Direction string `json:"direction,omitempty"`

	SourceIdentity string `json:"source.identity,omitempty"`
	SourceIP       string `json:"source.ip,omitempty"`

	DestinationNamespace string `json:"destination.namespace,omitempty"`
	DestinationPod       string `json:"destination.pod,omitempty"`
	DestinationPort      uint16 `json:"destination.port,omitempty"`
	// DestinationIP and DestinationIdentity are, for an outbound refusal,
	// the address the workload tried to reach and the identity expected
	// there.
	DestinationIP       string `json:"destination.ip,omitempty"`
	DestinationIdentity string `json:"destination.identity,omitempty"`

	Protocol   string `json:"protocol,omitempty"`
	HTTPMethod string `json:"http.method,omitempty"`
	HTTPPath   string `json:"http.path,omitempty"`
	HTTPStatus int    `json:"http.status,omitempty"`

	// Dropped is, in a gap record, how many records were lost.
	Dropped int64 `json:"dropped,omitempty"`
	// Suppressed is, in a refused record, how many similar refusals were
	// not recorded because refusals are rate-limited.
	Suppressed int64 `json:"suppressed,omitempty"`
}

// line is what is hashed: the record with the chain fields, and in a
// checkpoint record the checkpoint's fields.
type line struct {
	Type   string `json:"type"`
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
	Record
	checkpoint
	PrevHash string `json:"prevHash"`
}

// Defaults for Config's zero values.
const (
	DefaultBuffer             = 4096
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
)

// Config configures a Writer.
type Config struct {
	// Out receives the lines. Required.
	Out io.Writer
	// Stream names this chain (the proxy's pod and start time), so records
	// of several files can be told apart. Required; printable characters
	// only, as it is part of the signed checkpoint message.
	Stream string
	// Buffer is how many records may wait for the writer. Zero means 4096.
	Buffer int
	// Registerer receives the writer's metrics. Zero means none.
	Registerer prometheus.Registerer
	// SVIDs signs checkpoints. Zero means no checkpoints (the log then
	// verifies only as an unanchored chain). It must stay usable until Run
	// returns: Run signs a last checkpoint at shutdown.
	SVIDs x509svid.Source
	// CheckpointEvery: sign at least every N records. Zero means 1000.
	CheckpointEvery int
	// CheckpointInterval: and at least this often while records were
	// written since the last one. Zero means 10s.
	CheckpointInterval time.Duration
	// Logger reports checkpoints that could not be signed. Zero means
	// slog.Default().
	Logger *slog.Logger
}

// Writer appends records to a chain without blocking its callers.
type Writer struct {
	cfg     Config
	ch      chan Record
	dropped atomic.Int64
	m       metrics
}

// New validates cfg and returns a writer; Run writes.
func New(cfg Config) (*Writer, error) {
	if cfg.Out == nil {
		return nil, errors.New("audit: Config.Out is required")
	}
	if cfg.Stream == "" {
		return nil, errors.New("audit: Config.Stream is required")
	}
	for _, r := range cfg.Stream {
		if !unicode.IsPrint(r) {
			return nil, fmt.Errorf("audit: Config.Stream %q has a non-printable character", cfg.Stream)
		}
	}
	switch {
	case cfg.Buffer < 0:
		return nil, fmt.Errorf("audit: Config.Buffer is negative (%d)", cfg.Buffer)
	case cfg.CheckpointEvery < 0:
		return nil, fmt.Errorf("audit: Config.CheckpointEvery is negative (%d)", cfg.CheckpointEvery)
	case cfg.CheckpointInterval < 0:
		return nil, fmt.Errorf("audit: Config.CheckpointInterval is negative (%s)", cfg.CheckpointInterval)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Writer{cfg: cfg, ch: make(chan Record, cfg.Buffer), m: newMetrics()}
	if cfg.Registerer != nil {
		if err := w.m.register(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Write queues a record. It never blocks: when the buffer is full the
// record is dropped, counted, and later recorded as a gap. Records whose
// Event is the writer's own (gap, checkpoint) are a caller's bug: they are
// dropped and counted the same way, so they show as a gap.
func (w *Writer) Write(r Record) {
	if r.Event == EventGap || r.Event == EventCheckpoint {
		w.dropped.Add(1)
		w.m.dropped.Inc()
		return
	}
	select {
	case w.ch <- r:
	default:
		w.dropped.Add(1)
		w.m.dropped.Inc()
	}
}

// Run writes queued records until ctx ends, then writes what is still
// queued, signs a last checkpoint, and returns.
func (w *Writer) Run(ctx context.Context) error {
	c := &chain{w: w, bw: bufio.NewWriter(w.cfg.Out), prev: Genesis, signAt: w.cfg.CheckpointEvery, due: time.NewTimer(time.Hour)}
	c.due.Stop()
	defer c.due.Stop()
	for {
		select {
		case r := <-w.ch:
			if err := c.record(r); err != nil {
				return err
			}
			// Flush when the queue is drained, so a record reaches the file
			// promptly without a syscall per record under load.
			if len(w.ch) == 0 {
				if err := c.flush(); err != nil {
					return err
				}
			}
		case <-c.dueC:
			c.dueC = nil
			if err := c.checkpoint(); err != nil {
				return err
			}
			if err := c.flush(); err != nil {
				return err
			}
		case <-ctx.Done():
			for {
				select {
				case r := <-w.ch:
					if err := c.record(r); err != nil {
						return err
					}
				default:
					if n := w.dropped.Swap(0); n > 0 {
						if err := c.emit(line{Record: Record{Time: time.Now().UTC(), Event: EventGap, Dropped: n}}); err != nil {
							return err
						}
					}
					if err := c.checkpoint(); err != nil {
						return err
					}
					return c.flush()
				}
			}
		}
	}
}

// chain is the state of one Run: the head of the chain and what the next
// checkpoint will cover.
type chain struct {
	w    *Writer
	bw   *bufio.Writer
	seq  uint64
	prev string // hash of record seq
	// unsigned counts records since the last checkpoint; signAt is the
	// count at which the next checkpoint is tried.
	unsigned, signAt int
	// due fires CheckpointInterval after the first unsigned record; dueC
	// is its channel while armed, nil otherwise.
	due  *time.Timer
	dueC <-chan time.Time
}

// record writes r, preceded by a gap record if records were dropped, and
// signs a checkpoint when CheckpointEvery records are unsigned.
func (c *chain) record(r Record) error {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	if n := c.w.dropped.Swap(0); n > 0 {
		if err := c.emit(line{Record: Record{Time: r.Time, Event: EventGap, Dropped: n}}); err != nil {
			return err
		}
	}
	if r.Event == "" {
		r.Event = EventDecision
	}
	if err := c.emit(line{Record: r}); err != nil {
		return err
	}
	if c.unsigned >= c.signAt {
		return c.checkpoint()
	}
	return nil
}

// emit chains and writes one line.
func (c *chain) emit(l line) error {
	l.Type, l.Stream, l.Seq, l.PrevHash = Type, c.w.cfg.Stream, c.seq+1, c.prev
	b, h, err := encode(l)
	if err != nil {
		return err
	}
	if _, err := c.bw.Write(b); err != nil {
		return fmt.Errorf("audit: write: %w", err)
	}
	c.seq, c.prev = l.Seq, h
	if l.Event == EventCheckpoint {
		c.w.m.checkpoints.Inc()
		return nil
	}
	c.w.m.written.Inc()
	c.unsigned++
	if c.unsigned == 1 && c.w.cfg.SVIDs != nil {
		c.arm()
	}
	return nil
}

// checkpoint signs the head and writes the checkpoint record, if records
// were written since the last one. A failure to sign is counted and
// logged, not returned: the records are written anyway, and the next
// checkpoint (CheckpointEvery records or CheckpointInterval later) covers
// them.
func (c *chain) checkpoint() error {
	if c.unsigned == 0 || c.w.cfg.SVIDs == nil {
		return nil
	}
	now := time.Now().UTC()
	cp, err := sign(c.w.cfg.SVIDs, c.w.cfg.Stream, c.seq, c.prev, now)
	if err != nil {
		c.w.m.failures.Inc()
		c.w.cfg.Logger.Error("audit: records are not anchored by a signed checkpoint", "stream", c.w.cfg.Stream, "seq", c.seq, "unsigned", c.unsigned, "err", err)
		c.signAt = c.unsigned + c.w.cfg.CheckpointEvery
		c.arm()
		return nil
	}
	if err := c.emit(line{Record: Record{Time: now, Event: EventCheckpoint}, checkpoint: cp}); err != nil {
		return err
	}
	c.unsigned, c.signAt = 0, c.w.cfg.CheckpointEvery
	c.due.Stop()
	c.dueC = nil
	return nil
}

func (c *chain) arm() {
	c.due.Reset(c.w.cfg.CheckpointInterval)
	c.dueC = c.due.C
}

func (c *chain) flush() error {
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("audit: flush: %w", err)
	}
	return nil
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
