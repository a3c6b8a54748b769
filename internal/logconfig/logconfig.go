// Package logconfig is the --log-level and --log-format flags mesh's
// programs share, and the slog.Logger they describe. Production logs are
// JSON; text is for people reading a terminal.
package logconfig

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Config is what the flags set. The zero value is info and JSON.
type Config struct {
	// Level is debug, info, warn or error. Zero means info.
	Level string
	// Format is json or text. Zero means json.
	Format string
}

// FlagSet is what AddFlags needs of a flag set. The standard library's
// *flag.FlagSet (mesh-proxy) and pflag's (the controller) both have it.
type FlagSet interface {
	StringVar(p *string, name, value, usage string)
}

// AddFlags adds --log-level and --log-format to fs. Their defaults come
// from MESH_LOG_LEVEL and MESH_LOG_FORMAT when set (the injector sets them
// on the proxy from the chart's values), else info and json.
func (c *Config) AddFlags(fs FlagSet) {
	fs.StringVar(&c.Level, "log-level", envOr("MESH_LOG_LEVEL", "info"), "log level: debug, info, warn or error (default from MESH_LOG_LEVEL)")
	fs.StringVar(&c.Format, "log-format", envOr("MESH_LOG_FORMAT", "json"), "log format: json or text (default from MESH_LOG_FORMAT)")
}

// New returns the logger c describes, writing to w, or an error naming the
// bad value.
func (c Config) New(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	switch strings.ToLower(c.Level) {
	case "debug":
		level = slog.LevelDebug
	case "", "info":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(c.Format) {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", c.Format)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
