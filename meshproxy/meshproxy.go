// Package meshproxy is the mesh-proxy command line: `mesh-proxy init`
// installs the pod's interception rules (run as the init container, with
// NET_ADMIN and NET_RAW only), `mesh-proxy run` is the proxy, and
// `mesh-proxy standalone` is the same proxy outside Kubernetes. It turns
// flags into the configurations of packages intercept, proxy, authz and
// audit and runs them; cmd/mesh-proxy only calls Main.
//
// The command line is the standard library's flag package, one FlagSet
// per subcommand, not cobra: mesh-proxy is run with fixed arguments by the
// injector, the chart and the node agent, which need none of cobra's
// features, and cobra and pflag linked text/template and 0.4 MB of binary
// into every proxy. Flags are written --name value or --name=value, as
// before; flag accepts -name too.
package meshproxy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one subcommand.
type command struct {
	name, short, long string
	// flags defines the subcommand's flags on fs and returns what runs once
	// they are parsed.
	flags func(fs *flag.FlagSet) func(ctx context.Context, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{initCommand(), runCommand(), standaloneCommand()}
}

// UsageError is a command line that mesh-proxy cannot parse: an unknown
// subcommand or flag, a flag's value its type refuses, a stray argument, a
// missing required flag. Main exits 2 on it, as flag.ExitOnError does.
type UsageError struct {
	// Command is the subcommand, empty if there was none.
	Command string
	Err     error
}

func (e *UsageError) Error() string {
	if e.Command == "" {
		return e.Err.Error() + " (mesh-proxy help lists the commands)"
	}
	return fmt.Sprintf("%s: %v (mesh-proxy %s -h lists its flags)", e.Command, e.Err, e.Command)
}

func (e *UsageError) Unwrap() error { return e.Err }

// Main runs mesh-proxy with args (without the program's name) and returns
// its exit code: 0, 1 when the command failed, 2 on a *UsageError.
// Errors go to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := Execute(ctx, args, stdout, stderr)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "mesh-proxy:", err)
	if _, ok := errors.AsType[*UsageError](err); ok {
		return 2
	}
	return 1
}

// Execute runs the subcommand args[0] with the flags args[1:] until it
// ends or ctx does. Help (`help [command]`, `-h` anywhere) goes to stdout
// and returns nil.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if len(args) == 0 {
		return &UsageError{Err: errors.New("no command given: want init, run or standalone")}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) == 1 {
			writeUsage(stdout)
			return nil
		}
		c, ok := lookup(args[1])
		if !ok {
			return &UsageError{Err: fmt.Errorf("help: unknown command %q", args[1])}
		}
		fs := flag.NewFlagSet("mesh-proxy "+c.name, flag.ContinueOnError)
		c.flags(fs)
		c.writeHelp(stdout, fs)
		return nil
	}
	c, ok := lookup(args[0])
	if !ok {
		return &UsageError{Err: fmt.Errorf("unknown command %q: want init, run or standalone", args[0])}
	}
	fs := flag.NewFlagSet("mesh-proxy "+c.name, flag.ContinueOnError)
	// flag would print the error and all flags itself; Main prints the
	// error alone, and -h prints the help to stdout.
	fs.SetOutput(io.Discard)
	runFn := c.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.writeHelp(stdout, fs)
			return nil
		}
		return &UsageError{Command: c.name, Err: err}
	}
	// No arguments: "--ipv6 on" must not parse as --ipv6 plus a stray "on"
	// that is then ignored.
	if fs.NArg() > 0 {
		return &UsageError{Command: c.name, Err: fmt.Errorf("unexpected argument %q: %s takes flags only", fs.Arg(0), c.name)}
	}
	return runFn(ctx, stdout, stderr)
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func writeUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("mesh-proxy: mesh's sidecar proxy\n\nUsage:\n  mesh-proxy <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.short)
	}
	b.WriteString("\nmesh-proxy help <command> or mesh-proxy <command> -h lists a command's flags.\n")
	io.WriteString(w, b.String())
}

// writeHelp lists c's flags as the injector writes them, --name value.
func (c command) writeHelp(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nUsage:\n  mesh-proxy %s [flags]\n", c.short, c.name)
	if c.long != "" {
		fmt.Fprintf(&b, "\n%s\n", c.long)
	}
	b.WriteString("\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		fmt.Fprintf(&b, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		switch f.DefValue {
		case "", "0", "false", "0s":
		default:
			// Quoted for strings, as flag.PrintDefaults does.
			if g, ok := f.Value.(flag.Getter); ok {
				if _, ok := g.Get().(string); ok {
					fmt.Fprintf(&b, " (default %q)", f.DefValue)
					break
				}
			}
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	io.WriteString(w, b.String())
}
