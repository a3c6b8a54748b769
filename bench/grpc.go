package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/benchmark"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// grpcStreams is how many long-lived bidirectional streams the gRPC
// scenario keeps open on its one connection.
const grpcStreams = 16

// startGRPCBackend serves gRPC's own benchmark service (the one grpc-go's
// benchmarks use: a bidirectional stream that answers every message) in
// the harness's process, on the load generator's core.
func startGRPCBackend() (stop func(), err error) {
	ln, err := net.Listen("tcp", backendGRPC)
	if err != nil {
		return nil, fmt.Errorf("bench: gRPC backend: %w", err)
	}
	return benchmark.StartServer(benchmark.ServerInfo{Type: "protobuf", Listener: ln}), nil
}

// grpc opens 16 bidirectional streams on one HTTP/2 connection and, on
// each, sends a 64-byte message and waits for the 64-byte answer, over and
// over, for the duration: messages per second and round-trip percentiles.
func (r *runner) grpc(ctx context.Context) error {
	conn, err := grpc.NewClient(r.entry(pathGRPC), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := testpb.NewBenchmarkServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, r.duration+30*time.Second)
	defer cancel()
	req := &testpb.SimpleRequest{ResponseType: testpb.PayloadType_COMPRESSABLE, ResponseSize: 64, Payload: benchmark.NewPayload(testpb.PayloadType_COMPRESSABLE, 64)}

	// Open every stream and make one round trip on each before the clock
	// starts, so that the figure is of long-lived streams.
	streams := make([]testpb.BenchmarkService_StreamingCallClient, grpcStreams)
	for i := range streams {
		if streams[i], err = client.StreamingCall(ctx); err != nil {
			return fmt.Errorf("bench: open stream %d: %w", i, err)
		}
		if err := roundTrip(streams[i], req); err != nil {
			return fmt.Errorf("bench: stream %d: %w", i, err)
		}
	}
	var mu sync.Mutex
	var all []time.Duration
	var failed int64
	var firstErr error
	start := time.Now()
	deadline := start.Add(r.duration)
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1<<16)
			var err error
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err = roundTrip(s, req); err != nil {
					break
				}
				lat = append(lat, time.Since(t0))
			}
			if err == nil {
				err = closeStream(s)
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if err != nil {
				// A broken stream is a failure, and so is every round
				// trip it did not make.
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r.fail("grpc", failed)
	if firstErr != nil && failed == grpcStreams {
		return fmt.Errorf("bench: every gRPC stream failed: %w", firstErr)
	}
	if len(all) == 0 {
		return errors.New("bench: no gRPC round trip")
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p/100*float64(len(all))))].Microseconds()) / 1000
	}
	r.set("grpc_msgs_per_s", float64(len(all))/elapsed.Seconds())
	r.set("grpc_p50_ms", pct(50))
	r.set("grpc_p99_ms", pct(99))
	return nil
}

func roundTrip(s testpb.BenchmarkService_StreamingCallClient, req *testpb.SimpleRequest) error {
	if err := s.Send(req); err != nil {
		return err
	}
	resp, err := s.Recv()
	if err != nil {
		return err
	}
	if n := len(resp.GetPayload().GetBody()); n != 64 {
		return fmt.Errorf("answer of %d bytes, want 64", n)
	}
	return nil
}

// closeStream ends a stream cleanly: the server's end must be io.EOF.
func closeStream(s testpb.BenchmarkService_StreamingCallClient) error {
	if err := s.CloseSend(); err != nil {
		return err
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("stream end: %v, want EOF", err)
	}
	return nil
}
