package inventory

import (
	"strings"
	"testing"
)

func TestTimeout(t *testing.T) {
	for _, tc := range []struct {
		value   string
		set     bool
		want    uint32
		wantErr string
	}{
		{set: false, want: 0},
		{value: "2s", set: true, want: 2000},
		{value: " 1500ms ", set: true, want: 1500},
		{value: "1ms", set: true, want: 1},
		{value: "24h", set: true, want: 24 * 3600 * 1000},
		{value: "2", set: true, wantErr: "is not a duration"},
		{value: "banana", set: true, wantErr: "is not a duration"},
		{value: "", set: true, wantErr: "is not a duration"},
		{value: "0s", set: true, wantErr: "outside"},
		{value: "-1s", set: true, wantErr: "outside"},
		{value: "500us", set: true, wantErr: "outside"},
		{value: "25h", set: true, wantErr: "outside"},
		{value: "100000h", set: true, wantErr: "outside"},
	} {
		ann := map[string]string{}
		if tc.set {
			ann[RequestTimeoutAnnotation] = tc.value
		}
		got, err := Timeout(ann, RequestTimeoutAnnotation)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), RequestTimeoutAnnotation) {
				t.Errorf("%q: err %v, want one naming the annotation and %q", tc.value, err, tc.wantErr)
			}
			if got != 0 {
				t.Errorf("%q: got %d with an error", tc.value, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %d, %v; want %d", tc.value, got, err, tc.want)
		}
	}
}
