// Command mesh-e2e-echo is the end-to-end tests' application (image
// mesh-e2e/echo on the local cluster).
//
//	mesh-e2e-echo                 serve HTTP on :8080 (ECHO_HTTP_ADDR); every body names $POD_NAME
//	mesh-e2e-echo get URL         GET URL and print the body; exit 1 on failure
//
// HTTP responses are "hello from <POD_NAME> path=<path> peer=<X-Mesh-Peer-Identity>".
package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	var err error
	switch {
	case len(os.Args) == 1:
		err = serve()
	case len(os.Args) == 3 && os.Args[1] == "get":
		err = get(os.Args[2])
	default:
		err = errors.New("usage: mesh-e2e-echo [get URL]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mesh-e2e-echo:", err)
		os.Exit(1)
	}
}

func serve() error {
	addr := os.Getenv("ECHO_HTTP_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	name := os.Getenv("POD_NAME")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s path=%s peer=%s\n", name, r.URL.Path, r.Header.Get("X-Mesh-Peer-Identity"))
	})
	fmt.Printf("mesh-e2e-echo %s serving HTTP on %s\n", name, addr)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
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
