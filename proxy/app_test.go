package proxy_test

// The applications of the network-namespace tests: this test binary,
// started again inside a namespace as an unprivileged user with
// MESH_PROXY_TEST_ROLE set, so that its traffic is intercepted like a
// pod's.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

const roleEnv = "MESH_PROXY_TEST_ROLE"

// Application ports.
const (
	httpPort   = 8080
	tcpPort    = 9000
	grpcPort   = 9090
	bannerPort = 9100 // a protocol whose server speaks first
	// loopbackPort is the app's listener on 127.0.0.1 only.
	loopbackPort = 7070
)

// runRole runs the role named in the environment and reports whether there
// was one.
func runRole() bool {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false
	}
	var err error
	switch role {
	case "server":
		err = serve(os.Getenv("APP_NAME"))
	case "http":
		err = httpGet(os.Getenv("TARGET"), os.Getenv("SPOOF"))
	case "ws":
		err = wsEcho(os.Getenv("TARGET"), os.Getenv("MESSAGE"))
	case "tcp":
		err = tcpEcho(os.Getenv("TARGET"), os.Getenv("MESSAGE"))
	case "banner":
		err = readBanner(os.Getenv("TARGET"))
	case "grpc":
		err = grpcStream(os.Getenv("TARGET"), os.Getenv("MESSAGE"))
	case "raw":
		err = rawClient(os.Getenv("TARGET"), os.Getenv("SEGMENTS"))
	case "soak":
		err = soak(os.Getenv("TARGET_HTTP"), os.Getenv("TARGET_TCP"), os.Getenv("DURATION"))
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
	return true
}

// received is what the server app writes to APP_LOG for every HTTP
// request and every connection to its loopback-only port: what the
// application actually got, for the tests to assert on.
type received struct {
	Port       int
	Remote     string
	Method     string
	RequestURI string
	Header     http.Header
	// Body is what the handler read, where it reads (directApp).
	Body string `json:",omitempty"`
}

// appLog appends records to the file named by APP_LOG, if any.
type appLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *appLog) add(r received) {
	if l.f == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := json.Marshal(r)
	l.f.Write(append(b, '\n'))
}

// serve answers HTTP, echoes TCP and echoes a gRPC bidirectional stream.
func serve(name string) error {
	log := &appLog{}
	if path := os.Getenv("APP_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		log.f = f
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.add(received{Port: httpPort, Remote: r.RemoteAddr, Method: r.Method, RequestURI: r.RequestURI, Header: r.Header})
		fmt.Fprintf(w, "hello from %s path=%s peer=%s", name, r.URL.Path, r.Header.Get("X-Mesh-Peer-Identity"))
	})
	// A listener bound to loopback only, as debug and admin endpoints
	// often are: the mesh must not make it reachable from other pods.
	go func() {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", loopbackPort))
		if err != nil {
			return
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			log.add(received{Port: loopbackPort, Remote: c.RemoteAddr().String()})
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")
			c.Close()
		}
	}()
	mux.Handle("/d/", directApp(log))
	mux.Handle("/ws", websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
	errc := make(chan error, 4)
	go func() {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", bannerPort))
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
				fmt.Fprintf(c, "220 %s ready\r\n", name)
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write(buf[:n])
			}()
		}
	}()
	go func() { errc <- http.ListenAndServe(fmt.Sprintf(":%d", httpPort), mux) }()
	go func() {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", tcpPort))
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
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", grpcPort))
		if err != nil {
			errc <- err
			return
		}
		gs := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(gs, echoService{})
		errc <- gs.Serve(ln)
	}()
	return <-errc
}

type echoService struct {
	testgrpc.UnimplementedTestServiceServer
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

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpGet(url, spoof string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if spoof != "" {
		req.Header.Set("X-Mesh-Peer-Identity", spoof)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Print(string(b))
	return nil
}

func wsEcho(url, msg string) error {
	ws, err := websocket.Dial(url, "", "http://mesh.test/")
	if err != nil {
		return err
	}
	defer ws.Close()
	var got []string
	for i := range 3 {
		if err := websocket.Message.Send(ws, fmt.Sprintf("%s-%d", msg, i)); err != nil {
			return err
		}
		var reply string
		if err := websocket.Message.Receive(ws, &reply); err != nil {
			return err
		}
		got = append(got, reply)
	}
	fmt.Print(strings.Join(got, ","))
	return nil
}

// readBanner waits for the server's greeting, answers, and prints both.
func readBanner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	greeting, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte("HELO")); err != nil {
		return err
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	fmt.Print(strings.TrimSpace(greeting) + "|" + string(reply))
	return nil
}

// segment is a part of what the raw client sends, after a pause.
type segment struct {
	Data  string
	Pause string
}

// rawClient sends bytes exactly as given, in segments with pauses between
// them, then prints everything it reads back until the server closes or
// goes quiet for two seconds.
func rawClient(addr, segments string) error {
	var segs []segment
	if err := json.Unmarshal([]byte(segments), &segs); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, s := range segs {
		if s.Pause != "" {
			d, err := time.ParseDuration(s.Pause)
			if err != nil {
				return err
			}
			time.Sleep(d)
		}
		if _, err := c.Write([]byte(s.Data)); err != nil {
			return err
		}
	}
	var out []byte
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			break
		}
	}
	fmt.Print(string(out))
	return nil
}

func tcpEcho(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	// Half-close: the echo server sees EOF, answers, and closes.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	fmt.Print(string(b))
	return nil
}

func grpcStream(addr, msg string) error {
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
	var got []string
	for i := range 5 {
		part := fmt.Sprintf("%s-%d", msg, i)
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(part)}}); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		got = append(got, string(resp.GetPayload().GetBody()))
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	fmt.Print(strings.Join(got, ","))
	return nil
}

// soakResult is what the soak role prints.
type soakResult struct {
	Requests, Failures int
	LongLivedRounds    int
	Errors             []string
}

// soak keeps one long-lived TCP connection echoing and sends a steady
// stream of HTTP requests, each on a new connection, for a bounded time.
func soak(httpURL, tcpAddr, duration string) error {
	d, err := time.ParseDuration(duration)
	if err != nil {
		return err
	}
	long, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
	if err != nil {
		return err
	}
	defer long.Close()
	var res soakResult
	buf := make([]byte, 64)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && res.Requests < 2000 {
		res.Requests++
		resp, err := client.Get(httpURL)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if err != nil {
			res.Failures++
			res.Errors = append(res.Errors, err.Error())
		}
		msg := fmt.Sprintf("round-%d\n", res.Requests)
		_ = long.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := long.Write([]byte(msg)); err != nil {
			res.Errors = append(res.Errors, "long-lived write: "+err.Error())
			break
		}
		if _, err := io.ReadFull(long, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			res.Errors = append(res.Errors, fmt.Sprintf("long-lived read: %v", err))
			break
		}
		res.LongLivedRounds++
		time.Sleep(20 * time.Millisecond)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
