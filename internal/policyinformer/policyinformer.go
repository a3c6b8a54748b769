// Package policyinformer makes AuthorizationPolicy informers whose list
// and watch are given in code, for tests and the scale fixture: what
// policyclient.NewInformer makes against the API server, with the same
// object type and index.
package policyinformer

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
)

// New returns an informer that lists with list and watches what open
// returns, each called again whenever the reflector lists or watches
// again.
func New(list func() *v1alpha1.AuthorizationPolicyList, open func() watch.Interface) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(listThenWatch{&cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return list(), nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
			return open(), nil
		},
	}}, &v1alpha1.AuthorizationPolicy{}, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// Static returns an informer of a fixed list, as an informer holds it
// after its first list: its watch never sends.
func Static(policies []v1alpha1.AuthorizationPolicy) cache.SharedIndexInformer {
	return New(func() *v1alpha1.AuthorizationPolicyList {
		return &v1alpha1.AuthorizationPolicyList{Items: policies}
	}, func() watch.Interface { return watch.NewFake() })
}

// listThenWatch tells the reflector that a watch given in code does not
// do client-go's streaming list (the WatchListClient feature): it lists,
// then watches.
type listThenWatch struct{ *cache.ListWatch }

func (listThenWatch) IsWatchListSemanticsUnSupported() bool { return true }
