package workloadapi

import (
	"bytes"
	"crypto/x509"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// service implements the Workload API's X.509 methods; the others are
// the generated Unimplemented ones.
type service struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	src Source
	td  spiffeid.TrustDomain
	log *slog.Logger
}

// FetchX509SVID streams the SVID: now, and after every change.
func (s *service) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return watch(stream, s.src, s.x509SVIDResponse)
}

// FetchX509Bundles streams the trust bundle: now, and after every change.
func (s *service) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return watch(stream, s.src, s.x509BundlesResponse)
}

// watch sends make's message, and again whenever src changes and the
// message with it, until the caller goes or the server stops.
func watch[M any, PM interface {
	*M
	proto.Message
}](stream grpc.ServerStreamingServer[M], src Source, make func() (PM, error)) error {
	var last PM
	sent := false
	for {
		// Taken before reading, so a change in between is not missed.
		updated := src.Updated()
		m, err := make()
		if err != nil {
			return err
		}
		if !sent || !proto.Equal(last, m) {
			if err := stream.Send((*M)(m)); err != nil {
				return err
			}
			last, sent = m, true
		}
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-updated:
		}
	}
}

func (s *service) x509SVIDResponse() (*workload.X509SVIDResponse, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		s.log.Warn("workload API: no SVID to serve", "err", err)
		return nil, status.Error(codes.PermissionDenied, "workloadapi: no identity issued")
	}
	// The one place the key leaves the proxy: to the workload it was
	// issued for (see the package doc).
	certs, key, err := svid.MarshalRaw()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "workloadapi: marshal the SVID: %v", err)
	}
	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	return &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId: svid.ID.String(), X509Svid: certs, X509SvidKey: key, Bundle: roots,
	}}}, nil
}

func (s *service) x509BundlesResponse() (*workload.X509BundlesResponse, error) {
	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	return &workload.X509BundlesResponse{Bundles: map[string][]byte{s.td.IDString(): roots}}, nil
}

// roots is the trust domain's bundle as the API carries it: the
// certificates' DER, concatenated.
func (s *service) roots() ([]byte, error) {
	b, err := s.src.GetX509BundleForTrustDomain(s.td)
	if err != nil {
		s.log.Warn("workload API: no trust bundle to serve", "err", err)
		return nil, status.Error(codes.PermissionDenied, "workloadapi: no trust bundle")
	}
	return concatDER(b.X509Authorities())
}

func concatDER(certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, status.Error(codes.Unavailable, "workloadapi: the trust bundle is empty")
	}
	var buf bytes.Buffer
	for _, c := range certs {
		buf.Write(c.Raw)
	}
	return buf.Bytes(), nil
}
