package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/mesh-dev/mesh/e2e/load"
)

type recorder struct {
	mu sync.Mutex
	s  load.Summary
}

func newRecorder(calls int) *recorder {
	return &recorder{s: load.Summary{Calls: calls, Hosts: map[string]int{}, FirstSeen: map[string]int64{}, Codes: map[string]int{}, Statuses: map[string]int{}}}
}

func (r *recorder) add(host, code string, ok bool, failure string, codes map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	codes[code]++
	if host != "" {
		r.s.Hosts[host]++
		if _, seen := r.s.FirstSeen[host]; !seen {
			r.s.FirstSeen[host] = time.Now().UnixMilli()
		}
	}
	if ok {
		r.s.OK++
	} else {
		r.s.Failed++
		if failure != "" && len(r.s.Errors) < 10 {
			r.s.Errors = append(r.s.Errors, failure)
		}
	}
}

// run calls do calls times, at most concurrency at once and at rate per
// second, bounded by twice the time the rate needs plus 30 s: a fixed
// bound cut a run short on a loaded machine, and the calls in flight
// then failed for the tool's reason, not the mesh's. Calls the bound left
// unsent count as failed, so that OK + Failed is always Calls.
func run(rec *recorder, calls, concurrency int, perSecond float64, do func(ctx context.Context, i int)) {
	bound := time.Duration(2*float64(calls)/perSecond*float64(time.Second)) + 30*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	sent := 0
	defer func() {
		if unsent := calls - sent; unsent > 0 {
			rec.mu.Lock()
			rec.s.Failed += unsent
			rec.s.Errors = append(rec.s.Errors, fmt.Sprintf("%d of %d calls not sent within %s", unsent, calls, bound))
			rec.mu.Unlock()
		}
	}()
	lim := rate.NewLimiter(rate.Limit(perSecond), 1)
	work := make(chan int)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				do(ctx, i)
			}
		}()
	}
	for i := range calls {
		if lim.Wait(ctx) != nil {
			break
		}
		work <- i
		sent++
	}
	close(work)
	wg.Wait()
}

func loadArgs(args []string) (calls, concurrency int, perSecond float64, err error) {
	if calls, err = strconv.Atoi(args[0]); err != nil || calls <= 0 || calls > 100000 {
		return 0, 0, 0, fmt.Errorf("CALLS %q: want 1..100000", args[0])
	}
	if concurrency, err = strconv.Atoi(args[1]); err != nil || concurrency <= 0 || concurrency > 256 {
		return 0, 0, 0, fmt.Errorf("CONCURRENCY %q: want 1..256", args[1])
	}
	if perSecond, err = strconv.ParseFloat(args[2], 64); err != nil || perSecond <= 0 || perSecond > 10000 {
		return 0, 0, 0, fmt.Errorf("RATE %q: want 1..10000", args[2])
	}
	return calls, concurrency, perSecond, nil
}

func printSummary(s load.Summary) error {
	return json.NewEncoder(os.Stdout).Encode(s)
}

// grpcLoad: ADDR CALLS CONCURRENCY RATE, over one client connection.
func grpcLoad(args []string) error {
	calls, concurrency, perSecond, err := loadArgs(args[1:])
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(args[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	rec := newRecorder(calls)
	run(rec, calls, concurrency, perSecond, func(ctx context.Context, i int) {
		req := &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("x")}}
		want := codes.OK
		if i%10 == 9 {
			want = codes.NotFound
			req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "asked for"}
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := client.UnaryCall(cctx, req)
		code := status.Code(err)
		host := resp.GetHostname()
		failure := ""
		if code != want {
			failure = fmt.Sprintf("call %d: %v", i, err)
		}
		rec.add(host, strconv.Itoa(int(code)), code == want, failure, rec.s.Codes)
	})
	rec.s.Statuses = nil
	return printSummary(rec.s)
}

// httpLoad: URL CALLS CONCURRENCY RATE keepalive|close.
func httpLoad(args []string) error {
	calls, concurrency, perSecond, err := loadArgs(args[1:4])
	if err != nil {
		return err
	}
	keepAlive := args[4] == "keepalive"
	if !keepAlive && args[4] != "close" {
		return fmt.Errorf("%q: want keepalive or close", args[4])
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: concurrency}}
	base := strings.TrimSuffix(args[0], "/")
	rec := newRecorder(calls)
	run(rec, calls, concurrency, perSecond, func(ctx context.Context, i int) {
		url, want := base+"/", http.StatusOK
		if i%10 == 9 {
			url, want = base+"/status/503", http.StatusServiceUnavailable
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			rec.add("", "error", false, fmt.Sprintf("call %d: %v", i, err), rec.s.Statuses)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		host := ""
		if f := strings.Fields(string(b)); len(f) > 2 && f[0] == "hello" {
			host = f[2]
		}
		failure := ""
		if resp.StatusCode != want {
			failure = fmt.Sprintf("call %d: %s: %s", i, resp.Status, strings.TrimSpace(string(b)))
		}
		rec.add(host, strconv.Itoa(resp.StatusCode), resp.StatusCode == want, failure, rec.s.Statuses)
	})
	rec.s.Codes = nil
	return printSummary(rec.s)
}
