// Package tcpdump captures a link's packets for tests that assert what
// crossed the wire.
//
// Start returns only once tcpdump says it is capturing: a fixed sleep
// instead missed the first packets (a handshake, the first SYNs) on a
// loaded machine. Stop waits for the capture to settle and interrupts
// tcpdump rather than killing it, so that the file holds every packet.
package tcpdump

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Capture is one running tcpdump writing to Path.
type Capture struct {
	// Path is the pcap file, in the test's temporary directory.
	Path string

	cmd     *exec.Cmd
	errPath string // tcpdump's own messages
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

// Start captures the packets on iface that match filter (pcap filter
// words; "tcp" if none), in network namespace netns, or the host's if
// netns is empty. The capture stops when the test ends, if Stop was not
// called before.
func Start(t testing.TB, netns, iface string, filter ...string) *Capture {
	t.Helper()
	if len(filter) == 0 {
		filter = []string{"tcp"}
	}
	dir := t.TempDir()
	c := &Capture{Path: filepath.Join(dir, "capture.pcap"), errPath: filepath.Join(dir, "tcpdump.err"), exited: make(chan struct{})}
	stderr, err := os.Create(c.errPath)
	if err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	defer stderr.Close()
	args := append([]string{"tcpdump", "--immediate-mode", "-i", iface, "-U", "-s", "0", "-w", c.Path}, filter...)
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	c.cmd = exec.Command(args[0], args[1:]...)
	c.cmd.Stderr = stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	go func() { c.waitErr = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() { _ = c.Stop() })
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(c.Stderr(), "listening on") {
		select {
		case <-c.exited:
			t.Fatalf("tcpdump on %s exited before capturing: %v: %s", iface, c.waitErr, c.Stderr())
		case <-deadline:
			_ = c.Stop()
			t.Fatalf("tcpdump on %s did not start capturing within 30 s: %s", iface, c.Stderr())
		case <-tick.C:
		}
	}
	return c
}

// Stop waits for tcpdump to write what the kernel has handed it, then
// interrupts it and waits for it to exit (up to 10 s, then kills it). It
// fails with tcpdump's own messages if tcpdump did not exit cleanly.
//
// tcpdump reads its packets some time after they cross the link, and an
// interrupt ends it without reading those still queued: so Stop first
// waits until the file has not grown for half a second (at most 10 s).
func (c *Capture) Stop() error {
	c.once.Do(func() {
		var last int64 = -1
		for stable, deadline := 0, time.Now().Add(10*time.Second); stable < 5 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			var size int64
			if fi, err := os.Stat(c.Path); err == nil {
				size = fi.Size()
			}
			if size == last {
				stable++
			} else {
				stable, last = 0, size
			}
		}
		_ = c.cmd.Process.Signal(os.Interrupt)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	if c.waitErr != nil {
		return fmt.Errorf("tcpdump: %w: %s", c.waitErr, c.Stderr())
	}
	return nil
}

// Stderr is what tcpdump has said so far, for failure messages.
func (c *Capture) Stderr() string {
	b, _ := os.ReadFile(c.errPath)
	return string(b)
}
