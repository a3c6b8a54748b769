package ca

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Store persists the CA's state: PEM certificates and keys under fixed
// names (see the Key constants). Writes are optimistic: Save with the
// version Load returned fails with ErrConflict if someone else wrote since,
// so two controllers starting at once converge on one CA.
type Store interface {
	// Load returns the stored data and its version, or ErrNotFound.
	Load(ctx context.Context) (data map[string][]byte, version string, err error)
	// Save writes data. An empty version creates the store and fails with
	// ErrConflict if it exists.
	Save(ctx context.Context, data map[string][]byte, version string) (newVersion string, err error)
}

// Store errors.
var (
	ErrNotFound = errors.New("ca: store is empty")
	ErrConflict = errors.New("ca: store was changed concurrently")
)

// Keys of the stored data.
const (
	KeyBundle           = "bundle.pem"      // every trusted root
	KeyRootCert         = "root.crt"        // the active root
	KeyRootKey          = "root.key"        // its key (optional for a user-supplied CA)
	KeyIssuerCert       = "issuer.crt"      // the active issuer, then any intermediates up to the root
	KeyIssuerKey        = "issuer.key"      // its key
	KeyNextIssuerCert   = "next-issuer.crt" // the prepared issuer, during an issuer rotation
	KeyNextIssuerKey    = "next-issuer.key"
	KeyNextRootCert     = "next-root.crt" // the prepared root, during a root rotation
	KeyNextRootKey      = "next-root.key"
	KeyRetiringRootCert = "retiring-root.crt" // the previous root, after ActivateRoot
	KeyRootActivatedAt  = "root-activated-at" // RFC 3339 time of ActivateRoot
)

// SecretStore keeps the CA in one Kubernetes Secret. The controller's RBAC
// needs get, create and update on that Secret only.
type SecretStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
}

// Load implements Store.
func (s *SecretStore) Load(ctx context.Context) (map[string][]byte, string, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("ca: read secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return sec.Data, sec.ResourceVersion, nil
}

// Save implements Store.
func (s *SecretStore) Save(ctx context.Context, data map[string][]byte, version string) (string, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.Name, Namespace: s.Namespace, ResourceVersion: version,
			Labels: map[string]string{"app.kubernetes.io/part-of": "mesh", "app.kubernetes.io/component": "ca"},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	var err error
	if version == "" {
		sec, err = s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{})
	} else {
		sec, err = s.Client.CoreV1().Secrets(s.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	}
	switch {
	case apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err):
		return "", fmt.Errorf("%w: secret %s/%s", ErrConflict, s.Namespace, s.Name)
	case err != nil:
		return "", fmt.Errorf("ca: write secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return sec.ResourceVersion, nil
}

// MemoryStore keeps the CA in memory, with the same optimistic concurrency
// as SecretStore. It is for tests and throwaway CAs: a restart loses the CA.
type MemoryStore struct {
	mu      sync.Mutex
	data    map[string][]byte
	version int
}

// Load implements Store.
func (m *MemoryStore) Load(context.Context) (map[string][]byte, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return nil, "", ErrNotFound
	}
	return maps.Clone(m.data), strconv.Itoa(m.version), nil
}

// Save implements Store.
func (m *MemoryStore) Save(_ context.Context, data map[string][]byte, version string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if (version == "" && m.data != nil) || (version != "" && version != strconv.Itoa(m.version)) {
		return "", ErrConflict
	}
	m.data, m.version = maps.Clone(data), m.version+1
	return strconv.Itoa(m.version), nil
}

// Saves is how many times the store was written.
func (m *MemoryStore) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}
