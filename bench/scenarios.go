package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// scenario is one measurement on a running pair (or on the backend, for
// direct).
type scenario struct {
	name, about string
	path        path
	run         func(r *runner, ctx context.Context) error
}

var allScenarios = []scenario{
	{"latency", "1,000 req/s, HTTP/1.1 keep-alive, 8 connections, 64-byte responses: latency percentiles, and each proxy's CPU per request", pathHTTP, (*runner).latency},
	{"max", "maximum req/s, HTTP/1.1 keep-alive, 16 connections", pathHTTP, (*runner).max},
	{"newconn", "maximum req/s with a new client connection per request, 8 at a time (the mTLS hop may reuse connections), and each proxy's CPU per request", pathHTTP, (*runner).newConn},
	{"handshake", "a full mTLS handshake per request to the server side (no resumption), 8 at a time; direct: a new plaintext connection per request", pathHTTP, (*runner).handshake},
	{"bulk", "one connection, sequential 1 MiB responses: throughput", pathHTTP, (*runner).bulk},
	{"grpc", "gRPC: 16 long-lived bidirectional streams on one HTTP/2 connection (grpc-go's benchmark service), each sending a 64-byte message and waiting for the 64-byte answer, as fast as they go: messages per second and round-trip percentiles", pathGRPC, (*runner).grpc},
}

func pickScenarios(list string) ([]scenario, error) {
	if list == "" {
		return allScenarios, nil
	}
	var out []scenario
	for _, n := range strings.Split(list, ",") {
		found := false
		for _, s := range allScenarios {
			if s.name == strings.TrimSpace(n) {
				out, found = append(out, s), true
			}
		}
		if !found {
			return nil, fmt.Errorf("bench: -scenarios: unknown scenario %q", n)
		}
	}
	return out, nil
}

// runner runs scenarios against one target in one round, and records.
type runner struct {
	e        *env
	target   string
	pair     *pair // nil for direct
	duration time.Duration
	rec      *Round
}

func (r *runner) set(metric string, v float64) { r.rec.Values[metric] = v }
func (r *runner) fail(scenario string, n int64) {
	if n > 0 {
		r.rec.Failures[scenario] += n
	}
}

// entry is where the load generator connects for p.
func (r *runner) entry(p path) string {
	if r.pair != nil {
		return clientAddr
	}
	if p == pathGRPC {
		return backendGRPC
	}
	return backendHTTP
}

// fortioResult is the part of fortio's JSON the harness reads.
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64
		}
	}
}

// fortio runs fortio's load generator on the load core and reads its
// result. Requests answered other than 200 (SERVING for gRPC) are
// failures.
func (r *runner) fortio(ctx context.Context, name string, args ...string) (*fortioResult, error) {
	out := filepath.Join(r.e.work, "fortio", fmt.Sprintf("%s-%s-%d.json", r.target, name, r.rec.Round))
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	argv := append([]string{r.e.fortio, "load", "-quiet", "-json", out, "-r", "0.00001", "-p", "50,90,99,99.9", "-timeout", "10s", "-loglevel", "error"}, args...)
	if r.e.haveTaskset {
		argv = append([]string{"taskset", "-c", strconv.Itoa(r.e.loadCore)}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("bench: fortio %s: %w\n%s", name, err, lastLines(b, 10))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var res fortioResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("bench: fortio %s: %s: %w", name, out, err)
	}
	var total, ok int64
	for code, n := range res.RetCodes {
		total += n
		if code == "200" || code == "SERVING" {
			ok += n
		}
	}
	if total == 0 {
		return nil, fmt.Errorf("bench: fortio %s made no request", name)
	}
	r.fail(name, total-ok)
	return &res, nil
}

func (f *fortioResult) percentile(p float64) float64 {
	for _, x := range f.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return x.Value * 1000 // ms
		}
	}
	return 0
}

func (r *runner) url(size int) string {
	return fmt.Sprintf("http://%s/echo?size=%d", r.entry(pathHTTP), size)
}

func (r *runner) latency(ctx context.Context) error {
	d := r.duration.String()
	// Warm up: connections, TLS sessions, the proxies' pools and heaps.
	if _, err := r.fortio(ctx, "latency-warmup", "-qps", "1000", "-c", "8", "-t", (r.duration / 5).String(), r.url(64)); err != nil {
		return err
	}
	before := r.cpu()
	res, err := r.fortio(ctx, "latency", "-qps", "1000", "-c", "8", "-t", d, r.url(64))
	if err != nil {
		return err
	}
	after := r.cpu()
	for _, p := range []struct {
		name string
		v    float64
	}{{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p99.9", 99.9}} {
		r.set("latency_"+p.name+"_ms", res.percentile(p.v))
	}
	r.set("latency_rps", res.ActualQPS)
	r.cpuPerRequest("", before, after, res.DurationHistogram.Count)
	return nil
}

func (r *runner) max(ctx context.Context) error {
	before := r.cpu()
	res, err := r.fortio(ctx, "max", "-qps", "0", "-c", "16", "-t", r.duration.String(), r.url(64))
	if err != nil {
		return err
	}
	after := r.cpu()
	r.set("max_rps", res.ActualQPS)
	r.set("max_p99_ms", res.percentile(99))
	r.cpuPerRequest("_at_max", before, after, res.DurationHistogram.Count)
	return nil
}

func (r *runner) newConn(ctx context.Context) error {
	before := r.cpu()
	res, err := r.fortio(ctx, "newconn", "-qps", "0", "-c", "8", "-keepalive=false", "-t", r.duration.String(), r.url(64))
	if err != nil {
		return err
	}
	after := r.cpu()
	r.set("newconn_rps", res.ActualQPS)
	// What a new application connection costs each side: with the mTLS
	// hop pooled, mostly the client side's.
	r.cpuPerRequest("_newconn", before, after, res.DurationHistogram.Count)
	return nil
}

// cpuTimes are the pair's CPU times, client and server side.
type cpuTimes struct{ client, server time.Duration }

func (r *runner) cpu() cpuTimes {
	if r.pair == nil {
		return cpuTimes{}
	}
	return cpuTimes{cpuTime(r.pair.client.pid), cpuTime(r.pair.server.pid)}
}

func (r *runner) cpuPerRequest(suffix string, before, after cpuTimes, requests int64) {
	if r.pair == nil || requests == 0 {
		return
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(requests) }
	c, s := per(after.client-before.client), per(after.server-before.server)
	r.set("cpu_us_per_req_client"+suffix, c)
	r.set("cpu_us_per_req_server"+suffix, s)
	r.set("cpu_us_per_req_pair"+suffix, c+s)
}

// handshake opens a new connection per request, 8 at a time, for the
// duration: to the server side with a full TLS 1.3 handshake (no session
// cache), or, for direct, in plaintext to the backend.
func (r *runner) handshake(ctx context.Context) error {
	addr, tlsConf := backendHTTP, (*tls.Config)(nil)
	if r.pair != nil {
		cert, err := tls.LoadX509KeyPair(r.e.pki.ClientCert, r.e.pki.ClientKey)
		if err != nil {
			return err
		}
		caPEM, err := os.ReadFile(r.e.pki.CA)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		addr = serverAddr
		tlsConf = &tls.Config{
			Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: r.e.pki.ServerName,
			NextProtos: r.pair.alpn, MinVersion: tls.VersionTLS13,
			CurvePreferences: []tls.CurveID{tls.X25519}, // what OpenSSL 3.0 and mesh both offer
		}
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(r.duration)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := oneRequest(addr, tlsConf); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		log.Printf("%s handshake: %d failed, first: %v", r.target, f, firstErr.Load())
	}
	r.fail("handshake", failed.Load())
	r.set("handshake_rps", float64(ok.Load())/elapsed.Seconds())
	return nil
}

// oneRequest connects, sends one HTTP/1.1 request and reads the whole
// response, which must be 200.
func oneRequest(addr string, conf *tls.Config) error {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	c := raw
	if conf != nil {
		c = tls.Client(raw, conf)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /echo?size=64 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || n != 64 {
		return fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
	}
	return nil
}

// bulk reads 1 MiB responses one after another on one connection.
func (r *runner) bulk(ctx context.Context) error {
	const size = 1 << 20
	var conns atomic.Int64
	tr := &http.Transport{
		MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conns.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var total int64
	var failed int64
	start := time.Now()
	deadline := start.Add(r.duration)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := client.Get(r.url(size))
		if err != nil {
			failed++
			continue
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || n != size {
			failed++
			continue
		}
		total += n
	}
	elapsed := time.Since(start)
	r.fail("bulk", failed)
	if c := conns.Load(); c != 1 {
		return fmt.Errorf("bench: bulk used %d connections, want 1", c)
	}
	r.set("bulk_mbps", float64(total)*8/elapsed.Seconds()/1e6)
	return nil
}

// measure runs every round: targets interleaved (each round starts with
// the next target), each target's HTTP scenarios on one pair, gRPC on
// another.
func measure(ctx context.Context, e *env, targets []target, scenarios []scenario, rounds int, duration time.Duration) (*Results, error) {
	if err := checkPortsFree(); err != nil {
		return nil, err
	}
	pinSelf(e)
	backend, err := startBackend(ctx, e)
	if err != nil {
		return nil, err
	}
	defer backend.stop()
	stopGRPC, err := startGRPCBackend()
	if err != nil {
		return nil, err
	}
	defer stopGRPC()
	res := &Results{Meta: e.meta}
	res.Meta.Rounds, res.Meta.Duration = rounds, duration.String()
	for _, s := range scenarios {
		res.Scenarios = append(res.Scenarios, ScenarioInfo{Name: s.name, About: s.about})
	}
	for round := 1; round <= rounds; round++ {
		for i := range targets {
			t := targets[(i+round-1)%len(targets)]
			log.Printf("round %d/%d: %s", round, rounds, t.name)
			rec := Round{Round: round, Target: t.name, Values: map[string]float64{}, Failures: map[string]int64{}}
			if err := runTarget(ctx, e, t, scenarios, duration, &rec); err != nil {
				return nil, fmt.Errorf("bench: round %d, %s: %w", round, t.name, err)
			}
			res.Rounds = append(res.Rounds, rec)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
	}
	res.summarise()
	return res, nil
}

func runTarget(ctx context.Context, e *env, t target, scenarios []scenario, duration time.Duration, rec *Round) error {
	for _, p := range []path{pathHTTP, pathGRPC} {
		var todo []scenario
		for _, s := range scenarios {
			if s.path == p && (t.only == nil || slices.Contains(t.only, s.name)) {
				todo = append(todo, s)
			}
		}
		if len(todo) == 0 {
			continue
		}
		r := &runner{e: e, target: t.name, duration: duration, rec: rec}
		if t.start != nil {
			pr, err := t.start(ctx, e, p)
			if err != nil {
				return err
			}
			r.pair = pr
			if p == pathHTTP {
				// Idle: started, SVIDs loaded, no traffic yet.
				time.Sleep(time.Second)
				r.set("rss_idle_client_mib", rssMiB(pr.client.pid, "VmRSS"))
				r.set("rss_idle_server_mib", rssMiB(pr.server.pid, "VmRSS"))
			}
		}
		err := func() error {
			defer r.pair.stop()
			for _, s := range todo {
				if err := s.run(r, ctx); err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				if r.pair != nil && (r.pair.client.exited() || r.pair.server.exited()) {
					return errors.New(s.name + ": a proxy exited; see " + filepath.Join(e.work, "logs"))
				}
			}
			if r.pair != nil && p == pathHTTP {
				r.set("rss_peak_client_mib", rssMiB(r.pair.client.pid, "VmHWM"))
				r.set("rss_peak_server_mib", rssMiB(r.pair.server.pid, "VmHWM"))
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
