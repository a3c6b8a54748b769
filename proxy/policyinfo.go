package proxy

import (
	"encoding/json"
	"net/http"
	"time"
)

// PolicyInfo is what /policy answers: which policy the proxy enforces, by
// name and generation, never its rules (the admin port is reachable by
// anyone who can reach the pod). The JSON names are a stable interface
// (meshctl check, docs/meshctl.md): add, never rename.
type PolicyInfo struct {
	// Source is where the policy came from: SourceController, or
	// SourceFile for mesh-proxy run --policies.
	Source string `json:"source"`
	// Version is the controller's version of the pushed policy, as the
	// proxy acknowledged it; empty for a file.
	Version string `json:"version,omitempty"`
	// DefaultMode decides what no policy matches.
	DefaultMode string `json:"defaultMode"`
	// Policies are the AuthorizationPolicies in force, sorted by
	// namespace and name.
	Policies []PolicyRef `json:"policies"`
	// Warnings are the controller's and the compiler's about this policy.
	Warnings []string `json:"warnings,omitempty"`
	// Since is when the proxy started enforcing it.
	Since time.Time `json:"since"`
}

// PolicyRef names one AuthorizationPolicy in force.
type PolicyRef struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
}

// The sources of a PolicyInfo.
const (
	SourceController = "controller"
	SourceFile       = "file"
)

// servePolicy answers /policy.
func (p *Proxy) servePolicy(w http.ResponseWriter, _ *http.Request) {
	var info *PolicyInfo
	if p.cfg.Policy != nil {
		info = p.cfg.Policy()
	}
	if info == nil {
		http.Error(w, "no policy in force yet", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(info)
}
