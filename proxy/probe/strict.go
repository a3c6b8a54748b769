package probe

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
)

// unmarshalStrict decodes data into v as sigs.k8s.io/json's UnmarshalStrict
// does with its default options, without linking it (the proxy's idle
// memory, docs/benchmarks.md): field names match case-sensitively, and an
// unknown or duplicate field is a strict error, named by its path
// ("httpGet.method"). As there, a decoding error (bad JSON, a wrong type)
// wins over strict errors, which are returned only when decoding
// succeeded, in the order met. strict_test.go checks the two agree.
//
// It walks the document beside v's type to find the strict errors, drops
// the unknown fields (encoding/json would otherwise match them
// case-insensitively), and decodes the rest with encoding/json.
func unmarshalStrict(data []byte, v any) (strict []error, err error) {
	var syntax any
	if err := json.Unmarshal(data, &syntax); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	doc, err := readValue(dec)
	if err != nil {
		return nil, err
	}
	w := &strictWalk{seen: map[string]bool{}}
	clean := w.walk(doc, reflect.TypeOf(v), "")
	if w.dropped {
		// Decode without the unknown fields, for the decoding error
		// sigs.k8s.io/json would give (it skips them). The value does
		// not matter: there are strict errors.
		if data, err = json.Marshal(clean); err != nil {
			return nil, err
		}
	}
	// Otherwise every key matched a field exactly, and data decodes as it
	// is (a json.RawMessage keeps its bytes).
	if err := json.Unmarshal(data, v); err != nil {
		return nil, err
	}
	return w.errs, nil
}

// member is one key and value of a JSON object, kept in order and with
// duplicates, which a map would lose.
type member struct {
	key   string
	value any
}

// object is a JSON object; it encodes its members in order.
type object []member

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(m.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// readValue reads one JSON value: object, []any, json.Number (its literal
// kept, for the decoder's messages), string, bool or nil.
func readValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		o := object{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, ok := k.(string)
			if !ok {
				return nil, errors.New("json: object key is not a string")
			}
			v, err := readValue(dec)
			if err != nil {
				return nil, err
			}
			o = append(o, member{key, v})
		}
		_, err := dec.Token()
		return o, err
	case json.Delim('['):
		a := []any{}
		for dec.More() {
			v, err := readValue(dec)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err := dec.Token()
		return a, err
	}
	return tok, nil
}

type strictWalk struct {
	errs    []error
	dropped bool            // some field was unknown
	seen    map[string]bool // dedupes errors, as sigs.k8s.io/json does
}

func (w *strictWalk) fail(kind, path string) {
	msg := kind + " " + strconv.Quote(path)
	if !w.seen[msg] {
		w.seen[msg] = true
		w.errs = append(w.errs, errors.New(msg))
	}
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// walk checks value against t, reporting strict errors under path, and
// returns value without the fields t does not have.
func (w *strictWalk) walk(value any, t reflect.Type, path string) any {
	for t.Kind() == reflect.Pointer {
		if t.Implements(unmarshalerType) {
			return value
		}
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return value
	}
	join := func(key string) string {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	switch v := value.(type) {
	case object:
		switch t.Kind() {
		case reflect.Map:
			seen := map[string]bool{}
			out := make(object, 0, len(v))
			for _, m := range v {
				if seen[m.key] {
					w.fail("duplicate field", join(m.key))
				}
				seen[m.key] = true
				out = append(out, member{m.key, w.walk(m.value, t.Elem(), join(m.key))})
			}
			return out
		case reflect.Struct:
			fields := jsonFields(t)
			seen := map[string]bool{}
			out := make(object, 0, len(v))
			for _, m := range v {
				ft, ok := fields[m.key]
				if !ok {
					w.fail("unknown field", join(m.key))
					w.dropped = true
					continue
				}
				if seen[m.key] {
					w.fail("duplicate field", join(m.key))
				}
				seen[m.key] = true
				out = append(out, member{m.key, w.walk(m.value, ft, join(m.key))})
			}
			return out
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			out := make([]any, len(v))
			for i, e := range v {
				out[i] = w.walk(e, t.Elem(), path+"["+strconv.Itoa(i)+"]")
			}
			return out
		}
	}
	return value
}

// jsonFields maps the JSON names of t's fields to their types. The probe
// types have no embedded structs, which encoding/json would flatten.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
