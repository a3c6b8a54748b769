package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/normalize"
)

// Defaults for Config's zero values.
const (
	DefaultProxyUID   = 1337
	DefaultLogLevel   = "info"
	DefaultLogFormat  = "json"
	DefaultPullPolicy = corev1.PullIfNotPresent
	// DefaultIdentityPort is where the controller Service serves the
	// identity service and the control-plane streams.
	DefaultIdentityPort = 15012
	// imageRepo is the proxy image without its tag.
	imageRepo = "ghcr.io/mesh-dev/mesh-proxy"
)

// maxConfig bounds the config file: a handful of fields.
const maxConfig = 1 << 20

// Config is the injector's configuration: the YAML file of --injector-config
// (camelCase keys; unknown and duplicate keys are refused). Each field's
// zero value is documented and filled in by New.
type Config struct {
	// ProxyImage is the image of both injected containers (mesh-proxy init
	// and run). Zero means ghcr.io/mesh-dev/mesh-proxy:<version>.
	ProxyImage string `json:"proxyImage,omitempty"`
	// ProxyImagePullPolicy of both containers. Zero means IfNotPresent.
	ProxyImagePullPolicy corev1.PullPolicy `json:"proxyImagePullPolicy,omitempty"`
	// ProxyUID is the proxy's user (and group) ID: iptables leave its
	// traffic alone, so no app may share it. Zero means 1337; root is
	// refused.
	ProxyUID int64 `json:"proxyUID,omitempty"`
	// IdentityAddr is the controllers' host:port (identity service and
	// control-plane streams); a comma-separated list names replicas.
	// Zero means mesh-controller.<controller namespace>.svc:15012.
	IdentityAddr string `json:"identityAddr,omitempty"`
	// TokenAudience of the projected ServiceAccount token the proxy
	// presents. It must be the identity service's. Zero means
	// identity.DefaultAudience ("identity.mesh.dev").
	TokenAudience string `json:"tokenAudience,omitempty"`
	// InboundMode and OutboundMode are the proxy's defaults, strict or
	// permissive; pods override them with mesh.dev/inbound-mode and
	// mesh.dev/outbound-mode. Zero means strict inbound, permissive
	// outbound (the proxy's own defaults).
	InboundMode  proxy.Mode `json:"inboundMode,omitempty"`
	OutboundMode proxy.Mode `json:"outboundMode,omitempty"`
	// AdminPort is the proxy's admin port (metrics, health, the rewritten
	// app probes); never intercepted. Zero means 15020.
	AdminPort int32 `json:"adminPort,omitempty"`
	// InboundPort and OutboundPort are where iptables send the pod's
	// traffic. mesh-proxy run listens on 15006 and 15001 only, so other
	// values are refused until it can be told otherwise. Zero means those.
	InboundPort  int32 `json:"inboundPort,omitempty"`
	OutboundPort int32 `json:"outboundPort,omitempty"`
	// LogLevel (debug, info, warn, error) and LogFormat (json, text) of the
	// proxy, passed as MESH_LOG_LEVEL and MESH_LOG_FORMAT. Zero means info
	// and json.
	LogLevel  string `json:"logLevel,omitempty"`
	LogFormat string `json:"logFormat,omitempty"`
	// PathNormalization is how the proxy normalises request paths before
	// authorization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
	// Zero means the proxy's default, MERGE_SLASHES.
	PathNormalization string `json:"pathNormalization,omitempty"`
	// Resources of both injected containers. Zero means requests of 10m
	// CPU and 32Mi memory and a limit of 256Mi memory.
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Audit configures the proxy's audit log.
	Audit Audit `json:"audit,omitempty"`
	// ExcludeInboundPorts and ExcludeOutboundPorts are ports never
	// intercepted in any injected pod, added to the pods' own
	// mesh.dev/skip-*-ports. Entries are numbers or numeric strings.
	ExcludeInboundPorts  Ports `json:"excludeInboundPorts,omitempty"`
	ExcludeOutboundPorts Ports `json:"excludeOutboundPorts,omitempty"`
}

// Audit configures the proxy's audit log.
type Audit struct {
	// Enabled keeps the hash-chained audit log in a file,
	// /run/mesh/audit/audit.log on the pod's mesh-audit emptyDir, where
	// `meshctl audit verify` and log shippers read it whole; each line is
	// copied to the proxy's standard output too (meshctl audit logs).
	// False sends the records to standard output only.
	// Zero (absent) means true.
	Enabled *bool `json:"enabled,omitempty"`
	// CheckpointInterval is how soon after a record not yet covered the
	// proxy signs a checkpoint. Zero means the proxy's default (10s).
	CheckpointInterval metav1.Duration `json:"checkpointInterval,omitempty"`
}

// Ports is a list of ports, written as numbers or numeric strings.
type Ports []int32

// UnmarshalJSON accepts 15020 and "15020".
func (p *Ports) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("a list of ports: %w", err)
	}
	out := make(Ports, 0, len(raw))
	for _, r := range raw {
		s := strings.Trim(string(r), `"`)
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%s is not a port (1-65535)", r)
		}
		out = append(out, int32(n))
	}
	*p = out
	return nil
}

// Mesh is what the injector learns from the controller rather than the
// file: where the proxies find it and how they recognise it.
type Mesh struct {
	// TrustDomain of the mesh. Required.
	TrustDomain spiffeid.TrustDomain
	// ControllerID is the SPIFFE ID the proxy requires of the controller.
	// Required.
	ControllerID spiffeid.ID
	// Namespace is the controller's, for the default IdentityAddr.
	// Required.
	Namespace string
	// Version is mesh's release: the default image's tag and the value of
	// mesh.dev/injected. Required.
	Version string
}

// LoadConfig reads the config file at path. A missing file is not an
// error: it means every field's default.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Config{}, nil
	case err != nil:
		return Config{}, fmt.Errorf("inject: config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%w (in %s)", err, path)
	}
	return cfg, nil
}

// ParseConfig reads a config file's YAML strictly: unknown and duplicate
// keys are errors. It does not fill in defaults (New does).
func ParseConfig(b []byte) (Config, error) {
	if len(b) > maxConfig {
		return Config{}, fmt.Errorf("inject: config is %d bytes, more than %d", len(b), maxConfig)
	}
	var cfg Config
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return Config{}, fmt.Errorf("inject: config: %w", err)
	}
	return cfg, nil
}

// complete fills in cfg's zero values from mesh and checks every field.
func (cfg *Config) complete(mesh Mesh) error {
	if mesh.TrustDomain.IsZero() || mesh.ControllerID.IsZero() || mesh.Namespace == "" || mesh.Version == "" {
		return errors.New("inject: Mesh.TrustDomain, ControllerID, Namespace and Version are required")
	}
	if !mesh.ControllerID.MemberOf(mesh.TrustDomain) {
		return fmt.Errorf("inject: controller %s is not in trust domain %s", mesh.ControllerID, mesh.TrustDomain)
	}
	if cfg.ProxyImage == "" {
		cfg.ProxyImage = imageRepo + ":" + mesh.Version
	}
	if cfg.ProxyImagePullPolicy == "" {
		cfg.ProxyImagePullPolicy = DefaultPullPolicy
	}
	if cfg.ProxyUID == 0 {
		cfg.ProxyUID = DefaultProxyUID
	}
	if cfg.IdentityAddr == "" {
		cfg.IdentityAddr = fmt.Sprintf("mesh-controller.%s.svc:%d", mesh.Namespace, DefaultIdentityPort)
	}
	if cfg.TokenAudience == "" {
		cfg.TokenAudience = identity.DefaultAudience
	}
	if cfg.InboundMode == "" {
		cfg.InboundMode = proxy.Strict
	}
	if cfg.OutboundMode == "" {
		cfg.OutboundMode = proxy.Permissive
	}
	def := func(p *int32, v int32) {
		if *p == 0 {
			*p = v
		}
	}
	def(&cfg.AdminPort, proxy.DefaultAdminPort)
	def(&cfg.InboundPort, proxy.DefaultInboundPort)
	def(&cfg.OutboundPort, proxy.DefaultOutboundPort)
	if cfg.LogLevel == "" {
		cfg.LogLevel = DefaultLogLevel
	}
	if cfg.LogFormat == "" {
		cfg.LogFormat = DefaultLogFormat
	}
	if cfg.Resources.Requests == nil && cfg.Resources.Limits == nil && cfg.Resources.Claims == nil {
		cfg.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		}
	}
	if cfg.Audit.Enabled == nil {
		cfg.Audit.Enabled = ptrTo(true)
	}
	return cfg.validate()
}

func (cfg *Config) validate() error {
	fail := func(field, format string, args ...any) error {
		return fmt.Errorf("inject: config: %s: "+format, append([]any{field}, args...)...)
	}
	if strings.ContainsAny(cfg.ProxyImage, " \t\n") {
		return fail("proxyImage", "%q is not an image reference", cfg.ProxyImage)
	}
	switch cfg.ProxyImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fail("proxyImagePullPolicy", "%q is not Always, IfNotPresent or Never", cfg.ProxyImagePullPolicy)
	}
	if cfg.ProxyUID < 1 || cfg.ProxyUID > 1<<31-1 {
		return fail("proxyUID", "%d is not a non-root UID", cfg.ProxyUID)
	}
	for _, a := range strings.Split(cfg.IdentityAddr, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(a))
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || host == "" || n < 1 || n > 65535 || strings.ContainsAny(host, " \t\n") {
			return fail("identityAddr", "%q is not host:port", a)
		}
	}
	if strings.TrimSpace(cfg.TokenAudience) != cfg.TokenAudience || strings.ContainsAny(cfg.TokenAudience, " \t\n,") {
		return fail("tokenAudience", "%q is not an audience", cfg.TokenAudience)
	}
	for field, m := range map[string]proxy.Mode{"inboundMode": cfg.InboundMode, "outboundMode": cfg.OutboundMode} {
		if err := checkMode(m); err != nil {
			return fail(field, "%w", err)
		}
	}
	for field, p := range map[string]int32{"adminPort": cfg.AdminPort, "inboundPort": cfg.InboundPort, "outboundPort": cfg.OutboundPort} {
		if p < 1 || p > 65535 {
			return fail(field, "%d is not a port (1-65535)", p)
		}
	}
	if cfg.InboundPort != proxy.DefaultInboundPort || cfg.OutboundPort != proxy.DefaultOutboundPort {
		return fail("inboundPort/outboundPort", "%d/%d: mesh-proxy run listens on %d and %d only", cfg.InboundPort, cfg.OutboundPort, proxy.DefaultInboundPort, proxy.DefaultOutboundPort)
	}
	if cfg.AdminPort == cfg.InboundPort || cfg.AdminPort == cfg.OutboundPort {
		return fail("adminPort", "%d is also the inbound or outbound port", cfg.AdminPort)
	}
	switch cfg.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fail("logLevel", "%q is not debug, info, warn or error", cfg.LogLevel)
	}
	switch cfg.LogFormat {
	case "json", "text":
	default:
		return fail("logFormat", "%q is not json or text", cfg.LogFormat)
	}
	if cfg.PathNormalization != "" {
		m, err := normalize.ParseMode(cfg.PathNormalization)
		if err != nil {
			return fail("pathNormalization", "%w", err)
		}
		cfg.PathNormalization = m.String()
	}
	if d := cfg.Audit.CheckpointInterval.Duration; d < 0 {
		return fail("audit.checkpointInterval", "%s is negative", d)
	}
	return nil
}

// checkMode accepts the proxy's two modes.
func checkMode(m proxy.Mode) error {
	if m != proxy.Strict && m != proxy.Permissive {
		return fmt.Errorf("%q is not strict or permissive", m)
	}
	return nil
}

func ptrTo[T any](v T) *T { return &v }
