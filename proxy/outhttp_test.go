package proxy_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// statusService answers UnaryCall with the status asked for.
type statusService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (statusService) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if c := req.GetResponseStatus().GetCode(); c != 0 {
		return nil, status.Error(codes.Code(c), req.GetResponseStatus().GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}

// TestGRPCStatusesThroughPool: unary calls through both proxies over the
// pooled path keep their status, OK and errors alike (a trailers-only
// response must stay trailers-only), under concurrency.
func TestGRPCStatusesThroughPool(t *testing.T) {
	lb := newLoopback(t, time.Second)
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, statusService{})
	lb.handler.Store(&handlerBox{gs})
	conn, err := grpc.NewClient("passthrough:///backend", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", lb.outbound)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	const calls, workers = 2000, 8
	var mu sync.Mutex
	bad := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				req := &testgrpc.SimpleRequest{}
				want := codes.OK
				if i%2 == 1 {
					want = codes.NotFound
					req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no"}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.UnaryCall(ctx, req)
				cancel()
				if status.Code(err) != want {
					mu.Lock()
					bad[err.Error()]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("calls with the wrong status: %v", bad)
	}
}
