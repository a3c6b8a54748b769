// Package policyclient reads, writes and watches AuthorizationPolicies
// (package v1alpha1) through the API server. It is apart from the API
// types so that what needs only the types, the proxy's policy engine,
// does not link client-go's rest client and informers: 0.8 MiB of idle
// RSS per proxy (docs/benchmarks.md, "What was tuned").
package policyclient

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
)

// Client reads and writes AuthorizationPolicies through the API server.
// It is what a generated clientset would be, for the one type: the
// controller needs its status subresource and an informer, and nothing
// else of a clientset.
type Client struct {
	rest   rest.Interface
	params runtime.ParameterCodec
}

// New returns a client for the API server cfg describes.
func New(cfg *rest.Config) (*Client, error) {
	if cfg == nil {
		return nil, fmt.Errorf("policyclient: new client: no rest config")
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("policyclient: new client: %w", err)
	}
	c := rest.CopyConfig(cfg)
	gv := v1alpha1.GroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("policyclient: new client for %s: %w", cfg.Host, err)
	}
	return &Client{rest: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

// List lists the policies of namespace ns; "" (metav1.NamespaceAll) lists
// every namespace's.
func (c *Client) List(ctx context.Context, ns string, opts metav1.ListOptions) (*v1alpha1.AuthorizationPolicyList, error) {
	out := &v1alpha1.AuthorizationPolicyList{}
	err := c.rest.Get().Namespace(ns).Resource(v1alpha1.Resource).VersionedParams(&opts, c.params).Do(ctx).Into(out)
	if err != nil {
		return nil, fmt.Errorf("policyclient: list %s in %q: %w", v1alpha1.Resource, ns, err)
	}
	return out, nil
}

// Watch watches the policies of namespace ns ("": every namespace).
func (c *Client) Watch(ctx context.Context, ns string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	w, err := c.rest.Get().Namespace(ns).Resource(v1alpha1.Resource).VersionedParams(&opts, c.params).Watch(ctx)
	if err != nil {
		return nil, fmt.Errorf("policyclient: watch %s in %q: %w", v1alpha1.Resource, ns, err)
	}
	return w, nil
}

// Get reads one policy.
func (c *Client) Get(ctx context.Context, ns, name string) (*v1alpha1.AuthorizationPolicy, error) {
	out := &v1alpha1.AuthorizationPolicy{}
	if err := c.rest.Get().Namespace(ns).Resource(v1alpha1.Resource).Name(name).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("policyclient: get %s %s/%s: %w", v1alpha1.Resource, ns, name, err)
	}
	return out, nil
}

// Create stores a new policy. The API server ignores its status.
func (c *Client) Create(ctx context.Context, p *v1alpha1.AuthorizationPolicy) (*v1alpha1.AuthorizationPolicy, error) {
	out := &v1alpha1.AuthorizationPolicy{}
	if err := c.rest.Post().Namespace(p.Namespace).Resource(v1alpha1.Resource).Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("policyclient: create %s %s/%s: %w", v1alpha1.Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// Update replaces a policy's spec and metadata (not its status), at p's
// resourceVersion: a concurrent change fails with a Conflict.
func (c *Client) Update(ctx context.Context, p *v1alpha1.AuthorizationPolicy) (*v1alpha1.AuthorizationPolicy, error) {
	out := &v1alpha1.AuthorizationPolicy{}
	if err := c.rest.Put().Namespace(p.Namespace).Resource(v1alpha1.Resource).Name(p.Name).Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("policyclient: update %s %s/%s: %w", v1alpha1.Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// UpdateStatus replaces a policy's status (and nothing else), at p's
// resourceVersion: a concurrent change fails with a Conflict, which
// apierrors.IsConflict finds through the wrapping.
func (c *Client) UpdateStatus(ctx context.Context, p *v1alpha1.AuthorizationPolicy) (*v1alpha1.AuthorizationPolicy, error) {
	out := &v1alpha1.AuthorizationPolicy{}
	if err := c.rest.Put().Namespace(p.Namespace).Resource(v1alpha1.Resource).Name(p.Name).SubResource("status").Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("policyclient: update status of %s %s/%s: %w", v1alpha1.Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// Delete deletes a policy.
func (c *Client) Delete(ctx context.Context, ns, name string) error {
	if err := c.rest.Delete().Namespace(ns).Resource(v1alpha1.Resource).Name(name).Do(ctx).Error(); err != nil {
		return fmt.Errorf("policyclient: delete %s %s/%s: %w", v1alpha1.Resource, ns, name, err)
	}
	return nil
}

// NewInformer returns an informer over every namespace's policies, indexed
// by namespace (cache.NamespaceIndex). The caller runs it.
func NewInformer(c *Client, resync time.Duration) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return c.List(ctx, metav1.NamespaceAll, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return c.Watch(ctx, metav1.NamespaceAll, opts)
		},
	}
	return cache.NewSharedIndexInformer(lw, &v1alpha1.AuthorizationPolicy{}, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}
