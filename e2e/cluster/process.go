package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spawner starts every child process from one OS thread that lives as long
// as the cluster. Children get Pdeathsig, which the kernel delivers when the
// *thread* that forked them exits; Go may end a thread under a caller that
// locked it (network-namespace code does), so forking from an arbitrary
// goroutine could kill the control plane at random.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Never unlocked: when this goroutine ends, its thread ends with it,
		// which is exactly when the children should die too.
		for {
			select {
			case r := <-s.reqs:
				r.err <- r.cmd.Start()
			case <-s.done:
				return
			}
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	select {
	case s.reqs <- spawnReq{cmd: cmd, err: errc}:
		return <-errc
	case <-s.done:
		return errors.New("cluster: stopped")
	}
}

func (s *spawner) close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// proc is one running component.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// writePID records a child so that Down can find it after a crash.
func writePID(dir, name string, pid int, bin string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cluster: create pid dir: %w", err)
	}
	data := fmt.Sprintf("%d %s\n", pid, bin)
	if err := os.WriteFile(filepath.Join(dir, name+".pid"), []byte(data), 0o644); err != nil {
		return fmt.Errorf("cluster: write pid of %s: %w", name, err)
	}
	return nil
}

// pidRecord is a child recorded in a pid file.
type pidRecord struct {
	name string
	pid  int
	bin  string
	file string
}

func readPIDs(dir string) ([]pidRecord, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.pid"))
	if err != nil {
		return nil, err
	}
	var recs []pidRecord
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pidStr, bin, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 1 {
			continue
		}
		if pid == os.Getpid() {
			// A supervisor cleaning its own dir before it starts.
			continue
		}
		recs = append(recs, pidRecord{name: strings.TrimSuffix(filepath.Base(f), ".pid"), pid: pid, bin: bin, file: f})
	}
	return recs, nil
}

// alive reports whether pid is still the program that was recorded, so a
// recycled pid is never killed.
func (r pidRecord) alive() bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.pid))
	if err != nil || len(cmdline) == 0 {
		return false
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	if string(argv0) == r.bin {
		return true
	}
	// A process that re-executed itself shows its resolved path.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", r.pid))
	return err == nil && (exe == r.bin || strings.TrimSuffix(exe, " (deleted)") == r.bin)
}

// terminate sends SIGTERM to the record's process group, waits up to grace
// for it to go, then kills it.
func (r pidRecord) terminate(grace time.Duration) {
	if !r.alive() {
		return
	}
	_ = syscall.Kill(-r.pid, syscall.SIGTERM)
	_ = syscall.Kill(r.pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !r.alive() || isZombie(r.pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-r.pid, syscall.SIGKILL)
	_ = syscall.Kill(r.pid, syscall.SIGKILL)
	// SIGKILL is not instant either: a process in an uninterruptible
	// wait (I/O on a loaded machine) dies when the wait ends. Down checks
	// right after.
	for end := time.Now().Add(killWait); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if !r.alive() || isZombie(r.pid) {
			return
		}
	}
}

// killWait bounds the wait for a killed process to be gone.
const killWait = 10 * time.Second

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
