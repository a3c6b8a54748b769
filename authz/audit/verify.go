package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/mesh-dev/mesh/identity/meshid"
)

// VerifyOptions says what Verify checks besides the hash chain.
type VerifyOptions struct {
	// Bundle holds the trust roots checkpoints must chain to (all roots
	// valid during the log's time: old and new during a rotation).
	// Required unless ChainOnly.
	Bundle x509bundle.Source
	// ChainOnly checks only the hash chain, as before (no signatures).
	ChainOnly bool
	// Strict fails a stream whose last records are not covered by a
	// checkpoint. Without it they are reported as unanchored: the tail of
	// a live log, or a log cut or edited after its last checkpoint.
	// Ignored with ChainOnly.
	Strict bool
}

// VerifyError says where and why a log failed verification.
type VerifyError struct {
	Line   int // 1-based line number
	Reason string
}

func (e *VerifyError) Error() string { return fmt.Sprintf("audit: line %d: %s", e.Line, e.Reason) }

// Result summarises a verified log.
type Result struct {
	Records int   // lines verified, checkpoints included
	Gaps    int   // gap records
	Dropped int64 // records the gaps account for
	// Streams are the chains in the file, in the order they first appear.
	Streams []StreamResult
}

// StreamResult summarises one verified chain.
type StreamResult struct {
	Name string
	// Signer signed every checkpoint of the stream; zero under ChainOnly.
	Signer      spiffeid.ID
	Records     int // lines, checkpoints included
	Checkpoints int
	// Anchored records are covered by a checkpoint: every record up to
	// and including the last checkpoint. Unanchored records follow it.
	// Under ChainOnly no record is anchored.
	Anchored, Unanchored int
	Gaps                 int
	Dropped              int64
}

// stream is Verify's state for one chain.
type stream struct {
	StreamResult
	seq       uint64
	hash      string
	first     int    // line of seq 1
	tail      int    // line of the first record after the last checkpoint; 0 if none
	lastCheck uint64 // seq of the last checkpoint
	ns        string // destination.namespace of the stream's records
	nsLine    int
}

// Verify checks every line of r: its hash, its link to the previous record
// of its stream, its sequence number, and, unless opts.ChainOnly, every
// checkpoint: its signature over the chain head it follows, its signing
// chain against opts.Bundle at the checkpoint's time, and that one
// identity, of the namespace the records name, signed all of a stream's
// checkpoints. A stream with records but no checkpoint fails: that is what
// a re-chained log with its checkpoints stripped looks like. Records after
// a stream's last checkpoint are counted as unanchored, and fail only with
// opts.Strict: a log cut short at its end verifies (ship checkpoints off
// the node to cover that). Verify returns the first failure.
func Verify(r io.Reader, opts VerifyOptions) (Result, error) {
	if opts.Bundle == nil && !opts.ChainOnly {
		return Result{}, errors.New("audit: VerifyOptions.Bundle is required unless ChainOnly")
	}
	var res Result
	streams := map[string]*stream{}
	var order []*stream
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		raw := sc.Bytes()
		l, claimed, err := parseLine(raw)
		if err != nil {
			return res, &VerifyError{n, err.Error()}
		}
		st := streams[l.Stream]
		if st == nil {
			if l.Seq != 1 || l.PrevHash != Genesis {
				return res, &VerifyError{n, fmt.Sprintf("stream %q starts at seq %d, not 1: records before it were deleted", l.Stream, l.Seq)}
			}
			st = &stream{StreamResult: StreamResult{Name: l.Stream}, first: n}
			streams[l.Stream] = st
			order = append(order, st)
		} else {
			switch {
			case l.Seq != st.seq+1:
				return res, &VerifyError{n, fmt.Sprintf("seq %d follows seq %d in stream %q: records were deleted or reordered", l.Seq, st.seq, l.Stream)}
			case l.PrevHash != st.hash:
				return res, &VerifyError{n, fmt.Sprintf("prevHash does not match the hash of seq %d: the chain is broken", st.seq)}
			}
		}
		if l.Event == EventCheckpoint {
			if err := checkCheckpoint(raw, &l, st, opts); err != nil {
				return res, &VerifyError{n, err.Error()}
			}
			st.Checkpoints++
			st.lastCheck, st.tail = l.Seq, 0
		} else {
			if !l.checkpoint.isZero() {
				return res, &VerifyError{n, fmt.Sprintf("a %q record with checkpoint fields", l.Event)}
			}
			if st.tail == 0 {
				st.tail = n
			}
			if err := st.checkNamespace(n, l.DestinationNamespace, opts); err != nil {
				return res, err
			}
		}
		st.seq, st.hash = l.Seq, claimed
		st.Records++
		res.Records++
		if l.Event == EventGap {
			st.Gaps++
			st.Dropped += l.Dropped
			res.Gaps++
			res.Dropped += l.Dropped
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("audit: read: %w", err)
	}
	for _, st := range order {
		if !opts.ChainOnly {
			st.Anchored = int(st.lastCheck)
		}
		st.Unanchored = st.Records - st.Anchored
		res.Streams = append(res.Streams, st.StreamResult)
		if opts.ChainOnly {
			continue
		}
		switch {
		case st.Checkpoints == 0:
			return res, &VerifyError{st.first, fmt.Sprintf("stream %q has %d records and no signed checkpoint: its checkpoints were stripped, or its proxy had no SVID to sign with", st.Name, st.Records)}
		case opts.Strict && st.Unanchored > 0:
			return res, &VerifyError{st.tail, fmt.Sprintf("stream %q: the last %d records follow its last checkpoint (seq %d) and are not signed", st.Name, st.Unanchored, st.lastCheck)}
		}
	}
	return res, nil
}

// parseLine checks a line's own hash and decodes it.
func parseLine(raw []byte) (l line, hash string, err error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return l, "", errors.New("empty line")
	}
	const suffixLen = len(`,"hash":"`) + 64 + len(`"}`)
	if len(raw) < suffixLen+2 || !bytes.HasPrefix(raw[len(raw)-suffixLen:], []byte(`,"hash":"`)) || !bytes.HasSuffix(raw, []byte(`"}`)) {
		return l, "", errors.New("no hash at the end of the line")
	}
	claimed := string(raw[len(raw)-suffixLen+len(`,"hash":"`) : len(raw)-2])
	body := append(append([]byte(nil), raw[:len(raw)-suffixLen]...), '}')
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != claimed {
		return l, "", errors.New("hash mismatch: the line was edited")
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return l, "", fmt.Errorf("not a JSON record: %w", err)
	}
	if l.Type != Type {
		return l, "", fmt.Errorf("type %q, want %q", l.Type, Type)
	}
	return l, claimed, nil
}

// checkNamespace holds a stream's records to one destination namespace:
// one proxy, one pod, writes a stream. Once the stream's signer is known,
// the namespace must be the signer's.
func (st *stream) checkNamespace(n int, ns string, opts VerifyOptions) *VerifyError {
	if ns == "" || opts.ChainOnly {
		return nil
	}
	if st.ns == "" {
		st.ns, st.nsLine = ns, n
		if err := st.checkSignerNamespace(); err != nil {
			return &VerifyError{n, err.Error()}
		}
		return nil
	}
	if ns != st.ns {
		return &VerifyError{n, fmt.Sprintf("destination.namespace %q in stream %q, whose records at line %d are of namespace %q: a stream is one pod's", ns, st.Name, st.nsLine, st.ns)}
	}
	return nil
}

// checkSignerNamespace checks, once both are known, that the stream's
// signer is of its records' namespace: a workload's key vouches only for
// what its own proxy saw.
func (st *stream) checkSignerNamespace() error {
	if st.Signer.IsZero() || st.ns == "" {
		return nil
	}
	signerNS, _, err := meshid.ServiceAccountOf(st.Signer)
	if err != nil {
		return fmt.Errorf("checkpoint signer: %w", err)
	}
	if signerNS != st.ns {
		return fmt.Errorf("stream %q is signed by %s of namespace %q, but its records (line %d) are of namespace %q", st.Name, st.Signer, signerNS, st.nsLine, st.ns)
	}
	return nil
}

// checkCheckpoint verifies the checkpoint record l, whose raw bytes are
// raw, against the stream so far.
func checkCheckpoint(raw []byte, l *line, st *stream, opts VerifyOptions) error {
	// Only the signed message is protected by the signature; the rest of
	// the last checkpoint's line is protected by nothing after it. So the
	// line must be exactly what the writer writes: no other record fields,
	// no unknown fields, no duplicates, no reformatting.
	rec := l.Record
	rec.Time = time.Time{}
	if rec != (Record{Event: EventCheckpoint}) {
		return errors.New("a checkpoint with fields of a decision record")
	}
	if canon, _, err := encode(*l); err != nil || !bytes.Equal(bytes.TrimSuffix(canon, []byte("\n")), raw) {
		return errors.New("a checkpoint not written as the writer writes it (extra, duplicate or reformatted fields)")
	}
	switch {
	case st.seq == 0:
		return errors.New("a checkpoint covering no records")
	case l.checkpoint.Seq != st.seq || l.checkpoint.Head != st.hash:
		return fmt.Errorf("checkpoint covers seq %d head %.12s…, but the previous record is seq %d hash %.12s…", l.checkpoint.Seq, l.checkpoint.Head, st.seq, st.hash)
	}
	if opts.ChainOnly {
		return nil
	}
	for _, r := range l.Stream {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("stream %q has a non-printable character: it cannot be signed", l.Stream)
		}
	}
	certs, err := parseChain(l.X5C)
	if err != nil {
		return err
	}
	id, _, err := x509svid.Verify(certs, opts.Bundle, x509svid.WithTime(l.Time))
	if err != nil {
		return fmt.Errorf("checkpoint signed by a certificate the trust bundle does not vouch for at %s: %w", l.Time.UTC().Format(time.RFC3339), err)
	}
	if leaf := certs[0]; leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fmt.Errorf("signer %s: its certificate may not sign (no digitalSignature key usage)", id)
	}
	if appsvid.Marked(certs[0]) {
		// The app's SVID has the pod's identity too, but its key is the
		// app's: only the proxy, whose key never leaves it, vouches for
		// its audit log.
		return fmt.Errorf("signer %s: signed with the SVID of the pod's application (Workload API), not its proxy's", id)
	}
	if l.Signer != id.String() {
		return fmt.Errorf("checkpoint.signer %q is not the certificate's identity %s", l.Signer, id)
	}
	sig, err := base64.StdEncoding.DecodeString(l.Sig)
	if err != nil {
		return fmt.Errorf("checkpoint.sig: %w", err)
	}
	if err := checkSignature(certs[0], l.Alg, message(l.Stream, st.seq, st.hash, l.Time), sig); err != nil {
		return fmt.Errorf("signer %s: %w", id, err)
	}
	switch {
	case st.Signer.IsZero():
		st.Signer = id
		if _, _, err := meshid.ServiceAccountOf(id); err != nil {
			return fmt.Errorf("checkpoint signer: %w", err)
		}
		if err := st.checkSignerNamespace(); err != nil {
			return err
		}
	case id != st.Signer:
		return fmt.Errorf("stream %q was signed by %s, now by %s: one stream, one signer", st.Name, st.Signer, id)
	}
	return nil
}
