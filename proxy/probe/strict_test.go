package probe

import (
	"encoding/json"
	"reflect"
	"testing"

	sigsjson "sigs.k8s.io/json"
)

var strictSeeds = []string{
	`{"/app-health/web/readyz": {"tcpSocket": {"port": 1}}}`,
	`{"a": {}, "a": {}}`, `{"a": {}, "\u0061": 1}`,
	`{"tcpSocket": {"port": 1}, "periodSeconds": 5}`,
	`{"httpGet": {"path": "/", "port": 1, "method": "POST"}}`,
	`{"HTTPGET": {"path": "/", "port": 1}}`,
	`{"tcpSocket": {"port": 1}, "tcpSocket": {"port": 2}}`,
	`{"tcpSocket": {"port": 1}, "tcp\u0053ocket": {"port": 2}}`,
	`{"tcpSocket": {"port": 1, "Port": 2}}`,
	`{"grpc": {"port": 1, "Port": "x"}}`,
	`{"grpc": {"port": "x", "bogus": 1}}`,
	`{"grpc": {"port": 4294967297}}`,
	`{"httpGet": {"path": "/", "port": 1, "httpHeaders": [{"name": "a", "value": "b", "x": 1}, {"Name": "c"}]}}`,
	`{"httpGet": {"port": "http", "protocol": null, "scheme": 5}}`,
	`{"timeoutSeconds": 1.5, "x": 1}`, `{"x": 1, "y": 2, "x": 3}`,
	`"tcp:80"`, `null`, `[]`, `{`, `{} {}`, ``, `{"a":}`, `{"grpc": {"service": null, "mode": "TLS"}}`,
	`{"httpGet": {"port": 1}, "httpGet": {"path": "/x"}}`,
}

// agreeStrict decodes in into a Prober and into the top-level map with
// both unmarshalStrict and sigs.k8s.io/json, which must agree on the error,
// the strict errors and the value.
func agreeStrict(t *testing.T, in []byte) {
	t.Helper()
	for _, newV := range []func() any{func() any { return new(Prober) }, func() any { return new(map[string]json.RawMessage) }} {
		ours, theirs := newV(), newV()
		sOurs, errOurs := unmarshalStrict(in, ours)
		sTheirs, errTheirs := sigsjson.UnmarshalStrict(in, theirs)
		if (errOurs == nil) != (errTheirs == nil) || errOurs != nil && errOurs.Error() != errTheirs.Error() {
			t.Fatalf("%T %q: error %v, sigs.k8s.io/json's %v", ours, in, errOurs, errTheirs)
		}
		if errOurs != nil {
			continue
		}
		if len(sOurs) != len(sTheirs) {
			t.Fatalf("%T %q: strict errors %v, sigs.k8s.io/json's %v", ours, in, sOurs, sTheirs)
		}
		for i := range sOurs {
			if sOurs[i].Error() != sTheirs[i].Error() {
				t.Fatalf("%T %q: strict errors %v, sigs.k8s.io/json's %v", ours, in, sOurs, sTheirs)
			}
		}
		if len(sOurs) == 0 && !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("%T %q: decoded %+v, sigs.k8s.io/json %+v", ours, in, ours, theirs)
		}
	}
}

func TestStrictAgreement(t *testing.T) {
	for _, s := range strictSeeds {
		agreeStrict(t, []byte(s))
	}
}

func FuzzStrictAgreement(f *testing.F) {
	for _, s := range strictSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		agreeStrict(t, b)
	})
}
