// Command mesh-e2e-echo is the end-to-end tests' application (image
// mesh-e2e/echo on the local cluster). With no arguments it serves:
//
//	:8080  HTTP/1.1 and HTTP/2 cleartext (h2c); every body is one line,
//	       "hello from <POD_NAME> method=… path=… proto=… remote=… peer=<X-Mesh-Peer-Identity> headers="…"";
//	       /live answers 500 once ECHO_UNHEALTHY_AFTER (a duration) has passed
//	:9000  raw TCP echo
//	:9090  gRPC: grpc.testing.TestService (UnaryCall and FullDuplexCall echo payloads)
//
// ECHO_HTTP_ADDR, ECHO_TCP_ADDR and ECHO_GRPC_ADDR move them. Client modes,
// for tests:
//
//	mesh-e2e-echo get URL          GET and print the body; exit 1 unless 200
//	mesh-e2e-echo tcp ADDR MSG     send MSG, half-close, print the echo
//	mesh-e2e-echo grpc ADDR MSG    one FullDuplexCall round trip, print the echo
//	mesh-e2e-echo hold ADDR        one TCP connection kept open: a line echoed
//	                               every 200ms, "echo N" printed for each; when
//	                               the connection ends, "closed: <why>" and exit
//	                               0; after 2 minutes, exit 1
//	mesh-e2e-echo grpc-load ADDR CALLS CONCURRENCY RATE
//	                               CALLS UnaryCalls on one connection, at most
//	                               CONCURRENCY at once and RATE per second; every
//	                               10th asks for NOT_FOUND; prints a JSON summary
//	mesh-e2e-echo http-load URL CALLS CONCURRENCY RATE keepalive|close
//	                               the same with GETs; every 10th is URL/status/503
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func main() {
	var err error
	switch {
	case len(os.Args) == 1:
		err = serve()
	case len(os.Args) == 3 && os.Args[1] == "get":
		err = get(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "tcp":
		err = tcp(os.Args[2], os.Args[3])
	case len(os.Args) == 3 && os.Args[1] == "hold":
		err = hold(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "grpc":
		err = grpcCall(os.Args[2], os.Args[3])
	case len(os.Args) == 6 && os.Args[1] == "grpc-load":
		err = grpcLoad(os.Args[2:])
	case len(os.Args) == 7 && os.Args[1] == "http-load":
		err = httpLoad(os.Args[2:])
	default:
		err = errors.New("usage: mesh-e2e-echo [get URL | tcp ADDR MSG | grpc ADDR MSG]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mesh-e2e-echo:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func serve() error {
	name := os.Getenv("POD_NAME")
	start := time.Now()
	var unhealthyAfter time.Duration
	if v := os.Getenv("ECHO_UNHEALTHY_AFTER"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("ECHO_UNHEALTHY_AFTER: %w", err)
		}
		unhealthyAfter = d
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/live", func(w http.ResponseWriter, r *http.Request) {
		if unhealthyAfter > 0 && time.Since(start) > unhealthyAfter {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "bad status code", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "hello from %s status=%d\n", name, code)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		var hdrs []string
		for _, k := range names {
			hdrs = append(hdrs, k+"="+strings.Join(r.Header[k], ","))
		}
		fmt.Fprintf(w, "hello from %s method=%s path=%s proto=%s remote=%s peer=%s headers=%q\n", name, r.Method, r.URL.Path, r.Proto, r.RemoteAddr, r.Header.Get("X-Mesh-Peer-Identity"), strings.Join(hdrs, ";"))
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	httpAddr, tcpAddr, grpcAddr := env("ECHO_HTTP_ADDR", ":8080"), env("ECHO_TCP_ADDR", ":9000"), env("ECHO_GRPC_ADDR", ":9090")
	errc := make(chan error, 3)
	go func() {
		srv := &http.Server{Addr: httpAddr, Handler: mux, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
		errc <- srv.ListenAndServe()
	}()
	go func() {
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			errc <- err
			return
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	go func() {
		ln, err := net.Listen("tcp", grpcAddr)
		if err != nil {
			errc <- err
			return
		}
		gs := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(gs, echoService{name: name})
		errc <- gs.Serve(ln)
	}()
	fmt.Printf("mesh-e2e-echo %s serving HTTP on %s, TCP on %s, gRPC on %s\n", name, httpAddr, tcpAddr, grpcAddr)
	return <-errc
}

type echoService struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

// UnaryCall echoes the payload, names the pod in Hostname, and answers
// with the status the request asks for (ResponseStatus), as the gRPC
// interop server does.
func (e echoService) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload(), Hostname: e.name}, nil
}

func (echoService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func get(url string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Print(string(b))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}

func tcp(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	fmt.Print(string(b))
	return err
}

// hold keeps one connection open and proves it carries bytes, until it is
// closed: tests revoke connections under it. The line sent starts with a
// byte no HTTP method starts with, so that a port not declared opaque
// still reads it as opaque TCP.
func hold(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(2 * time.Minute)
	buf := make([]byte, 64)
	for i := 1; time.Now().Before(deadline); i++ {
		line := fmt.Sprintf("\x00hold %d\n", i)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, line); err != nil {
			fmt.Printf("closed: %v\n", err)
			return nil
		}
		if _, err := io.ReadFull(c, buf[:len(line)]); err != nil {
			fmt.Printf("closed: %v\n", err)
			return nil
		}
		fmt.Printf("echo %d\n", i)
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("hold: still open after 2 minutes")
}

func grpcCall(addr, msg string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := testgrpc.NewTestServiceClient(conn).FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	_ = stream.CloseSend()
	fmt.Print(string(resp.GetPayload().GetBody()))
	return nil
}
