// Package sniff recognises what a connection speaks from its first bytes,
// without consuming them: a TLS ClientHello and the ALPN protocols it
// offers (ClientHelloALPN), and, inside the connection, HTTP/1, the HTTP/2
// preface or neither (App). Everything here reads peer input, so it is
// bounded and fuzzed. Requests themselves are parsed by package h1.
package sniff

import (
	"encoding/binary"
	"errors"
)

// Protocol is what the first bytes of a connection look like.
type Protocol int

// Protocols.
const (
	Unknown Protocol = iota
	HTTP1
	HTTP2
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	}
	return "unknown"
}

// ErrMore means the bytes seen so far are a prefix of something
// recognisable: read more, up to the caller's limit and deadline.
var ErrMore = errors.New("sniff: need more bytes")

// H2Preface is the HTTP/2 client connection preface.
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// ClientHelloALPN returns the ALPN protocols offered by the TLS ClientHello
// at the start of b. It returns ErrMore while the first record is
// incomplete, and an error for anything that is not a ClientHello.
func ClientHelloALPN(b []byte) ([]string, error) {
	if len(b) < 5 {
		return nil, ErrMore
	}
	if b[0] != 0x16 || b[1] != 0x03 {
		return nil, errors.New("sniff: not a TLS handshake record")
	}
	recLen := int(binary.BigEndian.Uint16(b[3:5]))
	if recLen > 1<<14+256 {
		return nil, errors.New("sniff: TLS record too long")
	}
	if len(b) < 5+recLen {
		return nil, ErrMore
	}
	r := reader(b[5 : 5+recLen])
	typ, ok := r.u8()
	if !ok || typ != 1 {
		return nil, errors.New("sniff: not a ClientHello")
	}
	hsLen, ok := r.u24()
	if !ok {
		return nil, errors.New("sniff: short handshake header")
	}
	if hsLen > len(r) {
		// A ClientHello spread over several records: rare, and never sent
		// by Go; treat as not ours.
		return nil, errors.New("sniff: ClientHello spans records")
	}
	r = r[:hsLen]
	if !r.skip(2+32) || !r.skipVec8() || !r.skipVec16() || !r.skipVec8() {
		return nil, errors.New("sniff: malformed ClientHello")
	}
	if len(r) == 0 {
		return nil, nil // no extensions
	}
	exts, ok := r.vec16()
	if !ok {
		return nil, errors.New("sniff: malformed extensions")
	}
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		body, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return nil, errors.New("sniff: malformed extension")
		}
		if typ != 16 { // application_layer_protocol_negotiation
			continue
		}
		list, ok := body.vec16()
		if !ok {
			return nil, errors.New("sniff: malformed ALPN extension")
		}
		var protos []string
		for len(list) > 0 {
			p, ok := list.vec8()
			if !ok || len(p) == 0 {
				return nil, errors.New("sniff: malformed ALPN protocol")
			}
			protos = append(protos, string(p))
		}
		return protos, nil
	}
	return nil, nil
}

// reader is a cursor over TLS wire data.
type reader []byte

func (r *reader) u8() (int, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return int(v), true
}

func (r *reader) u16() (int, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*r)
	*r = (*r)[2:]
	return int(v), true
}

func (r *reader) u24() (int, bool) {
	if len(*r) < 3 {
		return 0, false
	}
	v := int((*r)[0])<<16 | int((*r)[1])<<8 | int((*r)[2])
	*r = (*r)[3:]
	return v, true
}

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) vec8() (reader, bool) {
	n, ok := r.u8()
	if !ok || len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) vec16() (reader, bool) {
	n, ok := r.u16()
	if !ok || len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) skipVec8() bool  { _, ok := r.vec8(); return ok }
func (r *reader) skipVec16() bool { _, ok := r.vec16(); return ok }
