package identity_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"

	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
)

// h2peer is a hand-driven HTTP/2 client: it does what a misbehaving or
// hostile client would, which grpc-go's own client refuses to do (ping
// every few milliseconds, hold streams open, send huge headers).
type h2peer struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
}

// frame is what the tests need of a frame the server sent; the Framer
// reuses its frames, so they are copied out.
type frame struct {
	typ      http2.FrameType
	stream   uint32
	ack      bool
	code     http2.ErrCode
	debug    string
	closedBy error // set when the connection ended instead
}

func (f frame) String() string {
	if f.closedBy != nil {
		return "connection closed: " + f.closedBy.Error()
	}
	return fmt.Sprintf("%v stream=%d ack=%v code=%v debug=%q", f.typ, f.stream, f.ack, f.code, f.debug)
}

func dialH2(t *testing.T, addr string, preface bool) *h2peer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p := &h2peer{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if preface {
		if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
			t.Fatal(err)
		}
		if err := p.fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// open starts a Certify stream and sends no message, so the server's
// handler stays waiting and the stream stays active. extra headers are
// added to the request's.
func (p *h2peer) open(stream uint32, extra ...hpack.HeaderField) {
	p.t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: identityv1.Identity_Certify_FullMethodName},
		{Name: ":authority", Value: "identity"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	} {
		enc.WriteField(f)
	}
	for _, f := range extra {
		enc.WriteField(f)
	}
	// Split as a client must: frames of at most the default 16 KiB.
	b := block.Bytes()
	const maxFrame = 16 << 10
	first := b[:min(len(b), maxFrame)]
	b = b[len(first):]
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: first, EndHeaders: len(b) == 0}); err != nil {
		p.t.Fatal(err)
	}
	for len(b) > 0 {
		chunk := b[:min(len(b), maxFrame)]
		b = b[len(chunk):]
		if err := p.fr.WriteContinuation(stream, len(b) == 0, chunk); err != nil {
			p.t.Fatal(err)
		}
	}
}

func (p *h2peer) ping(i byte) {
	p.t.Helper()
	if err := p.fr.WritePing(false, [8]byte{i}); err != nil {
		p.t.Fatalf("ping %d: %v", i, err)
	}
}

// next returns the next frame the server sends within d, or the end of
// the connection; a frame of type 0xff with no error means nothing came.
func (p *h2peer) next(d time.Duration) frame {
	p.conn.SetReadDeadline(time.Now().Add(d))
	f, err := p.fr.ReadFrame()
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return frame{typ: 0xff}
	case err != nil:
		return frame{closedBy: err}
	}
	out := frame{typ: f.Header().Type, stream: f.Header().StreamID, ack: f.Header().Flags.Has(http2.FlagPingAck)}
	switch f := f.(type) {
	case *http2.GoAwayFrame:
		out.code, out.debug = f.ErrCode, string(f.DebugData())
	case *http2.RSTStreamFrame:
		out.code = f.ErrCode
	}
	return out
}

// await reads frames until one satisfies want, the connection ends, or
// within passes; it returns that frame, or a frame of type 0xff.
func (p *h2peer) await(within time.Duration, want func(frame) bool) frame {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		f := p.next(time.Until(deadline))
		if f.typ == 0xff && f.closedBy == nil {
			break
		}
		if want(f) || f.closedBy != nil {
			return f
		}
	}
	return frame{typ: 0xff}
}

// padHeaders is n headers with values of size bytes.
func padHeaders(n, size int) []hpack.HeaderField {
	var out []hpack.HeaderField
	for i := range n {
		out = append(out, hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: strings.Repeat("a", size), Sensitive: true})
	}
	return out
}

func isGoAway(code http2.ErrCode, debug string) func(frame) bool {
	return func(f frame) bool { return f.typ == http2.FrameGoAway && f.code == code && f.debug == debug }
}

// TestTransportLimits runs the identity service's real gRPC server, built
// with ServerOptions, on loopback and drives it with a raw HTTP/2 client
// doing what the limits exist to stop. Each case would pass with gRPC's
// own defaults only if the limit were not needed; the small durations
// make the configured values, not the defaults, decide.
func TestTransportLimits(t *testing.T) {
	e := setup(t)
	srv, err := identity.NewServer(identity.ServerConfig{CA: e.ca, Kube: e.cs, Audit: quiet})
	if err != nil {
		t.Fatal(err)
	}
	const within = 5 * time.Second
	tests := []struct {
		name string
		cfg  identity.TransportConfig
		// noPreface: the client connects and sends nothing.
		noPreface bool
		run       func(t *testing.T, p *h2peer)
	}{
		{
			name: "a silent connection is closed after the handshake timeout", noPreface: true,
			cfg: identity.TransportConfig{HandshakeTimeout: 300 * time.Millisecond},
			run: func(t *testing.T, p *h2peer) {
				if f := p.await(within, func(frame) bool { return false }); f.closedBy == nil {
					t.Fatalf("connection still open after %v: %v", within, f)
				}
			},
		},
		{
			name: "pings with no RPC in flight get GOAWAY",
			run: func(t *testing.T, p *h2peer) {
				for i := range 5 {
					p.ping(byte(i))
				}
				if f := p.await(within, isGoAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings")); f.typ != http2.FrameGoAway {
					t.Fatalf("no GOAWAY too_many_pings: %v", f)
				}
				if f := p.await(within, func(frame) bool { return false }); f.closedBy == nil {
					t.Fatalf("connection still open after GOAWAY: %v", f)
				}
			},
		},
		{
			name: "pings faster than MinPingInterval during an RPC get GOAWAY",
			run: func(t *testing.T, p *h2peer) {
				p.open(1)
				for i := range 5 {
					p.ping(byte(i))
				}
				if f := p.await(within, isGoAway(http2.ErrCodeEnhanceYourCalm, "too_many_pings")); f.typ != http2.FrameGoAway {
					t.Fatalf("no GOAWAY too_many_pings: %v", f)
				}
			},
		},
		{
			name: "pings at MinPingInterval during an RPC are answered",
			cfg:  identity.TransportConfig{MinPingInterval: 100 * time.Millisecond},
			run: func(t *testing.T, p *h2peer) {
				p.open(1)
				for i := range 5 {
					p.ping(byte(i))
					f := p.await(within, func(f frame) bool { return f.typ == http2.FramePing && f.ack || f.typ == http2.FrameGoAway })
					if f.typ != http2.FramePing {
						t.Fatalf("ping %d: %v, want its ack", i, f)
					}
					time.Sleep(300 * time.Millisecond)
				}
			},
		},
		{
			name: "streams past MaxConcurrentStreams are refused",
			cfg:  identity.TransportConfig{MaxConcurrentStreams: 2},
			run: func(t *testing.T, p *h2peer) {
				for _, s := range []uint32{1, 3, 5} {
					p.open(s)
				}
				f := p.await(within, func(f frame) bool { return f.typ == http2.FrameRSTStream })
				if f.typ != http2.FrameRSTStream || f.stream != 5 || f.code != http2.ErrCodeRefusedStream {
					t.Fatalf("got %v, want RST_STREAM REFUSED_STREAM on stream 5", f)
				}
			},
		},
		{
			name: "many headers past the size limit are refused",
			run: func(t *testing.T, p *h2peer) {
				p.open(1, padHeaders(200, 100)...)
				f := p.await(within, func(f frame) bool { return f.typ == http2.FrameRSTStream || f.typ == http2.FrameGoAway })
				if f.typ != http2.FrameRSTStream || f.stream != 1 || f.code != http2.ErrCodeFrameSize {
					t.Fatalf("got %v, want RST_STREAM FRAME_SIZE_ERROR on stream 1", f)
				}
			},
		},
		{
			// One value longer than the whole limit cannot be decoded at all:
			// the connection is closed.
			name: "one header past the size limit ends the connection",
			run: func(t *testing.T, p *h2peer) {
				p.open(1, padHeaders(1, 20<<10)...)
				if f := p.await(within, func(frame) bool { return false }); f.closedBy == nil {
					t.Fatalf("connection still open: %v", f)
				}
			},
		},
		{
			name: "an idle connection is closed",
			cfg:  identity.TransportConfig{MaxConnectionIdle: 300 * time.Millisecond},
			run: func(t *testing.T, p *h2peer) {
				if f := p.await(within, isGoAway(http2.ErrCodeNo, "max_idle")); f.typ != http2.FrameGoAway {
					t.Fatalf("idle connection not sent GOAWAY: %v", f)
				}
			},
		},
		{
			name: "a connection past its age is closed, RPC or not",
			cfg:  identity.TransportConfig{MaxConnectionAge: 300 * time.Millisecond, MaxConnectionAgeGrace: 300 * time.Millisecond},
			run: func(t *testing.T, p *h2peer) {
				p.open(1)
				if f := p.await(within, isGoAway(http2.ErrCodeNo, "max_age")); f.typ != http2.FrameGoAway {
					t.Fatalf("old connection not sent GOAWAY: %v", f)
				}
				if f := p.await(within, func(frame) bool { return false }); f.closedBy == nil {
					t.Fatalf("old connection still open after the grace: %v", f)
				}
			},
		},
		{
			name: "a peer that does not answer pings is dropped",
			cfg:  identity.TransportConfig{PingInterval: time.Second, PingTimeout: 300 * time.Millisecond},
			run: func(t *testing.T, p *h2peer) {
				if f := p.await(within, func(f frame) bool { return f.typ == http2.FramePing && !f.ack }); f.typ != http2.FramePing {
					t.Fatalf("server sent no keepalive ping: %v", f)
				}
				if f := p.await(within, func(frame) bool { return false }); f.closedBy == nil {
					t.Fatalf("connection still open with the ping unanswered: %v", f)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := identity.ServerOptions(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer(opts...)
			srv.Register(gs)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Go(func() { _ = gs.Serve(lis) })
			defer wg.Wait()
			defer gs.Stop()
			p := dialH2(t, lis.Addr().String(), !tt.noPreface)
			// Closed before Stop, which waits for connections still in
			// their handshake.
			defer p.conn.Close()
			tt.run(t, p)
		})
	}
}
