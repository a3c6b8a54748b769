// Package castatus is how operators see and rotate the mesh CA without
// its keys leaving the controller. The leader publishes the CA's public
// state (roots, issuers, rotation) in the ConfigMap mesh-ca-status in the
// controller's namespace, and takes rotation steps asked for by an
// annotation on that ConfigMap: `meshctl ca show` reads the one and
// `meshctl ca rotate` writes the other. Who may rotate the CA is thus an
// RBAC question about one ConfigMap (patch), which the API server audits,
// and the CA Secret stays readable by the controller only.
//
// A request names a step and an id; the leader takes the step once, and
// records the id and the outcome in the status, where the requester waits
// for it. The steps keep the CA's own guards (ca.CA.RetireRoot refuses
// before no SVID of the old root can be valid); the verification between
// steps, that every proxy trusts the new root, is meshctl's, since it
// reads each proxy's /identity.
package castatus

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mesh-dev/mesh/ca"
)

// ConfigMapName is the status ConfigMap's name, in the controller's
// namespace.
const ConfigMapName = "mesh-ca-status"

// StatusKey is the ConfigMap key holding the Document as JSON.
const StatusKey = "status.json"

// RequestAnnotation holds a Request as JSON.
const RequestAnnotation = "mesh.dev/ca-request"

// Step is one CA rotation step.
type Step string

// The steps, in a root rotation's order, and the issuer's own.
const (
	// PrepareRoot adds a new root to the trust bundle; nothing is signed
	// by it yet.
	PrepareRoot Step = "prepare-root"
	// ActivateRoot makes a new issuer under the prepared root, which
	// becomes the active root; the old one stays trusted.
	ActivateRoot Step = "activate-root"
	// RetireRoot removes the previous root from the bundle.
	RetireRoot Step = "retire-root"
	// RotateIssuer replaces the issuer with a new one under the active
	// root at once.
	RotateIssuer Step = "rotate-issuer"
)

// Steps are the valid steps.
var Steps = []Step{PrepareRoot, ActivateRoot, RetireRoot, RotateIssuer}

// Request asks the leader to take a step.
type Request struct {
	ID   string `json:"id"`
	Step Step   `json:"step"`
}

// Result is the outcome of the last request the leader took.
type Result struct {
	ID   string    `json:"id"`
	Step Step      `json:"step"`
	At   time.Time `json:"at"`
	// Error is why the step was refused or failed; empty if it was taken.
	Error string `json:"error,omitempty"`
}

// Document is the ConfigMap's status.json.
type Document struct {
	ca.Status
	// UpdatedAt is when a controller last wrote it, and Replica which.
	UpdatedAt time.Time `json:"updatedAt"`
	Replica   string    `json:"replica"`
	// LastRequest is the outcome of the last rotation request.
	LastRequest *Result `json:"lastRequest,omitempty"`
}

// ParseRequest reads a RequestAnnotation's value.
func ParseRequest(s string) (Request, error) {
	var r Request
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		return Request{}, fmt.Errorf("castatus: annotation %s: not a request: %w", RequestAnnotation, err)
	}
	if r.ID == "" {
		return Request{}, fmt.Errorf("castatus: annotation %s: the request has no id", RequestAnnotation)
	}
	if err := r.Step.Valid(); err != nil {
		return Request{}, fmt.Errorf("castatus: annotation %s: %w", RequestAnnotation, err)
	}
	return r, nil
}

// Valid says whether s is one of Steps.
func (s Step) Valid() error {
	for _, v := range Steps {
		if s == v {
			return nil
		}
	}
	return fmt.Errorf("unknown step %q (want one of prepare-root, activate-root, retire-root, rotate-issuer)", string(s))
}

// ParseDocument reads a StatusKey's value, and refuses a document that
// describes no CA that can exist (see Document.check).
func ParseDocument(s string) (*Document, error) {
	var d Document
	if err := json.Unmarshal([]byte(s), &d); err != nil {
		return nil, fmt.Errorf("castatus: %s: %w", StatusKey, err)
	}
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("castatus: %s: %w", StatusKey, err)
	}
	return &d, nil
}

// Root returns the root with a role, if any.
func (d *Document) Root(role string) (ca.CertStatus, bool) {
	for _, r := range d.Roots {
		if r.Role == role {
			return r, true
		}
	}
	return ca.CertStatus{}, false
}

// newID is a request id: random, so two operators' requests never match.
func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
