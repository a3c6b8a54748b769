package v1alpha1

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
)

// Resource is the API's plural resource name.
const Resource = "authorizationpolicies"

// Client reads and writes AuthorizationPolicies through the API server.
// It is what a generated clientset would be, for the one type: the
// controller needs its status subresource and an informer, and nothing
// else of a clientset.
type Client struct {
	rest   rest.Interface
	params runtime.ParameterCodec
}

// NewClient returns a client for the API server cfg describes.
func NewClient(cfg *rest.Config) (*Client, error) {
	if cfg == nil {
		return nil, fmt.Errorf("v1alpha1: new client: no rest config")
	}
	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("v1alpha1: new client: %w", err)
	}
	c := rest.CopyConfig(cfg)
	gv := GroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("v1alpha1: new client for %s: %w", cfg.Host, err)
	}
	return &Client{rest: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

// List lists the policies of namespace ns; "" (metav1.NamespaceAll) lists
// every namespace's.
func (c *Client) List(ctx context.Context, ns string, opts metav1.ListOptions) (*AuthorizationPolicyList, error) {
	out := &AuthorizationPolicyList{}
	err := c.rest.Get().Namespace(ns).Resource(Resource).VersionedParams(&opts, c.params).Do(ctx).Into(out)
	if err != nil {
		return nil, fmt.Errorf("v1alpha1: list %s in %q: %w", Resource, ns, err)
	}
	return out, nil
}

// Watch watches the policies of namespace ns ("": every namespace).
func (c *Client) Watch(ctx context.Context, ns string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	w, err := c.rest.Get().Namespace(ns).Resource(Resource).VersionedParams(&opts, c.params).Watch(ctx)
	if err != nil {
		return nil, fmt.Errorf("v1alpha1: watch %s in %q: %w", Resource, ns, err)
	}
	return w, nil
}

// Get reads one policy.
func (c *Client) Get(ctx context.Context, ns, name string) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	if err := c.rest.Get().Namespace(ns).Resource(Resource).Name(name).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("v1alpha1: get %s %s/%s: %w", Resource, ns, name, err)
	}
	return out, nil
}

// Create stores a new policy. The API server ignores its status.
func (c *Client) Create(ctx context.Context, p *AuthorizationPolicy) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	if err := c.rest.Post().Namespace(p.Namespace).Resource(Resource).Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("v1alpha1: create %s %s/%s: %w", Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// Update replaces a policy's spec and metadata (not its status), at p's
// resourceVersion: a concurrent change fails with a Conflict.
func (c *Client) Update(ctx context.Context, p *AuthorizationPolicy) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	if err := c.rest.Put().Namespace(p.Namespace).Resource(Resource).Name(p.Name).Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("v1alpha1: update %s %s/%s: %w", Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// UpdateStatus replaces a policy's status (and nothing else), at p's
// resourceVersion: a concurrent change fails with a Conflict, which
// apierrors.IsConflict finds through the wrapping.
func (c *Client) UpdateStatus(ctx context.Context, p *AuthorizationPolicy) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	if err := c.rest.Put().Namespace(p.Namespace).Resource(Resource).Name(p.Name).SubResource("status").Body(p).Do(ctx).Into(out); err != nil {
		return nil, fmt.Errorf("v1alpha1: update status of %s %s/%s: %w", Resource, p.Namespace, p.Name, err)
	}
	return out, nil
}

// Delete deletes a policy.
func (c *Client) Delete(ctx context.Context, ns, name string) error {
	if err := c.rest.Delete().Namespace(ns).Resource(Resource).Name(name).Do(ctx).Error(); err != nil {
		return fmt.Errorf("v1alpha1: delete %s %s/%s: %w", Resource, ns, name, err)
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
	return cache.NewSharedIndexInformer(lw, &AuthorizationPolicy{}, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}
