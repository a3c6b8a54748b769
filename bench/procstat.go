package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// cpuTime is a process's CPU time so far, all its threads, or 0 if it
// cannot be read: the sum of each thread's time on a CPU from
// /proc/PID/task/TID/schedstat, in nanoseconds. /proc/PID/stat's utime
// and stime are charged by sampling a 10 ms tick, so a proxy busy a few
// percent of a core is sampled only some tens of times in a run;
// schedstat has no sampling error. A thread that exits between two
// readings takes its time with it; Go's runtime keeps its threads, so
// the proxies lose none in practice.
func cpuTime(pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) < 1 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		total += time.Duration(ns)
	}
	return total
}

// rssMiB reads a memory figure (VmRSS: now; VmHWM: the peak) of a process
// from /proc/PID/status, in MiB.
func rssMiB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || k != field {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0
		}
		return kb / 1024
	}
	return 0
}

// pinSelf moves the harness's own threads (its handshake and bulk
// clients) to the load generator's core, away from the proxies'.
func pinSelf(e *env) {
	if !e.haveTaskset {
		return
	}
	_ = exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(e.loadCore), strconv.Itoa(os.Getpid())).Run()
}
