// Package h1 puts a strict HTTP/1.1 request-framing gate between a client
// connection and Go's net/http server.
//
// net/http's parser is lenient: it accepts bare LF line endings, folds
// obs-fold continuation lines, trims a Content-Length list and so on. Each
// leniency is a place where the proxy and the application behind it can
// disagree about where one request ends and the next begins (request
// smuggling), or about what a header said. A Gate wraps the client
// connection and hands net/http a request head only after ParseHead's
// strict grammar has accepted all of it; body bytes then pass by that
// head's framing, a chunked body parsed strictly to find its end.
//
// The grammar accepted is a subset of RFC 9112 chosen so that net/http
// (and any conforming server behind the proxy) reads exactly the same
// message boundaries:
//
//   - request line: token SP request-target SP ("HTTP/1.1" | "HTTP/1.0")
//     CRLF, one SP between the parts, the target visible ASCII only, no
//     empty lines before it;
//   - every line of the head ends in CRLF: a bare LF or a bare CR anywhere
//     rejects the head;
//   - field lines: token ":" OWS value OWS, no whitespace before the colon,
//     no obs-fold, no control characters in the value other than HTAB;
//   - at most one Content-Length (decimal digits, no sign, no list, no
//     overflow), at most one Transfer-Encoding, exactly "chunked", never both,
//     and none in an HTTP/1.0 request (net/http ignores it there);
//   - at most one Host, and HTTP/1.1 requires it;
//   - a bounded head (Config.MaxHeadBytes);
//   - chunked bodies: chunk-size hex digits (at most 16, no overflow),
//     optional chunk extensions without whitespace, CRLF strictly, and a
//     trailer section under the field-line rules.
//
// An invalid head never reaches net/http: the gate substitutes a request
// only it can recognise (see Gate.Rejected) so the handler can answer 400
// in order. An invalid chunked body cannot be answered: its head has already
// been served, so the gate fails the read and net/http drops the connection.
package h1
