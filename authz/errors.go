package authz

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// FieldError is one thing wrong with a policy, at one field. Its fields
// and its text are those of apimachinery's field.Error, so that the
// admission webhook, the controller and meshctl, which convert it to one
// (authz/validation), report what they reported before authz had its own
// type.
type FieldError struct {
	Type ErrorType
	// Field is the path, such as spec.rules[0].from[1].namespaces[0].
	Field string
	// BadValue is the value refused; its type decides how it is printed.
	BadValue any
	Detail   string
	// Origin names the check, for the few checks apimachinery names.
	Origin string
}

// ErrorType is the kind of a FieldError; the values are field.ErrorType's.
type ErrorType string

// Error types authz reports.
const (
	ErrorTypeRequired     ErrorType = "FieldValueRequired"
	ErrorTypeInvalid      ErrorType = "FieldValueInvalid"
	ErrorTypeNotSupported ErrorType = "FieldValueNotSupported"
	ErrorTypeForbidden    ErrorType = "FieldValueForbidden"
)

func (t ErrorType) String() string {
	switch t {
	case ErrorTypeRequired:
		return "Required value"
	case ErrorTypeInvalid:
		return "Invalid value"
	case ErrorTypeNotSupported:
		return "Unsupported value"
	case ErrorTypeForbidden:
		return "Forbidden"
	}
	return fmt.Sprintf("<unknown error %q>", string(t))
}

// Error is "<field>: <type>[: <value>][: <detail>]", as field.Error prints.
func (e *FieldError) Error() string {
	var s string
	switch e.Type {
	case ErrorTypeRequired, ErrorTypeForbidden:
		s = e.Type.String()
	default:
		switch v := e.BadValue.(type) {
		case int64, int32, float64, float32, bool:
			s = fmt.Sprintf("%s: %v", e.Type, v)
		case string:
			s = fmt.Sprintf("%s: %q", e.Type, v)
		default:
			if b, err := json.Marshal(v); err == nil {
				s = fmt.Sprintf("%s: %s", e.Type, b)
			} else if st, ok := v.(fmt.Stringer); ok {
				s = fmt.Sprintf("%s: %s", e.Type, st.String())
			} else {
				s = fmt.Sprintf("%s: %#v", e.Type, v)
			}
		}
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return e.Field + ": " + s
}

// ErrorList is what Validate finds wrong with a policy.
type ErrorList []*FieldError

// ToAggregate is the list as one error, nil if it is empty, with the text
// of field.ErrorList.ToAggregate: the one message, or "[a, b]" of the
// distinct messages in order.
func (l ErrorList) ToAggregate() error {
	if len(l) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var msgs []string
	for _, e := range l {
		if m := e.Error(); !seen[m] {
			seen[m] = true
			msgs = append(msgs, m)
		}
	}
	return aggregate(msgs)
}

type aggregate []string

func (a aggregate) Error() string {
	if len(a) == 1 {
		return a[0]
	}
	return "[" + strings.Join(a, ", ") + "]"
}

// fieldPath is a field's path, printed as field.Path prints it.
type fieldPath string

func (p fieldPath) child(name string) fieldPath { return p + "." + fieldPath(name) }
func (p fieldPath) index(i int) fieldPath       { return p + "[" + fieldPath(strconv.Itoa(i)) + "]" }

func required(p fieldPath, detail string) *FieldError {
	return &FieldError{Type: ErrorTypeRequired, Field: string(p), BadValue: "", Detail: detail}
}

func forbidden(p fieldPath, detail string) *FieldError {
	return &FieldError{Type: ErrorTypeForbidden, Field: string(p), BadValue: "", Detail: detail}
}

func invalid(p fieldPath, value any, detail string) *FieldError {
	return &FieldError{Type: ErrorTypeInvalid, Field: string(p), BadValue: value, Detail: detail}
}

func notSupported[T ~string](p fieldPath, value any, valid []T) *FieldError {
	quoted := make([]string, len(valid))
	for i, v := range valid {
		quoted[i] = strconv.Quote(string(v))
	}
	return &FieldError{Type: ErrorTypeNotSupported, Field: string(p), BadValue: value, Detail: "supported values: " + strings.Join(quoted, ", ")}
}

func (e *FieldError) withOrigin(o string) *FieldError {
	e.Origin = o
	return e
}
