// Package webhook is the validating admission webhook for
// AuthorizationPolicy: it refuses, at `kubectl apply` time, every policy
// that authz.Validate finds wrong, with a message naming each field, so
// nothing broken is ever stored.
package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/validation"
)

// Path is where the webhook is served.
const Path = "/validate-authorizationpolicy"

// maxBody bounds an AdmissionReview; the API server's own limit on objects
// is 3 MiB.
const maxBody = 4 << 20

// Handler validates AuthorizationPolicies in AdmissionReview v1 requests.
type Handler struct {
	Logger *slog.Logger
}

func (h Handler) log() *slog.Logger {
	if h.Logger == nil {
		return slog.Default()
	}
	return h.Logger
}

// ServeHTTP implements http.Handler.
func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(w, "admission review too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview v1", http.StatusBadRequest)
		return
	}
	review.Response = h.review(review.Request)
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&review)
}

func (h Handler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation == admissionv1.Delete {
		return resp
	}
	var p v1alpha1.AuthorizationPolicy
	if err := json.Unmarshal(req.Object.Raw, &p); err != nil {
		return deny(resp, http.StatusBadRequest, fmt.Sprintf("not an AuthorizationPolicy: %v", err))
	}
	if errs := validation.Validate(&p); len(errs) > 0 {
		h.log().Info("policy refused", "policy", req.Namespace+"/"+req.Name, "errors", errs.ToAggregate().Error())
		return deny(resp, http.StatusUnprocessableEntity, errs.ToAggregate().Error())
	}
	return resp
}

func deny(resp *admissionv1.AdmissionResponse, code int32, msg string) *admissionv1.AdmissionResponse {
	resp.Allowed = false
	resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg, Reason: metav1.StatusReasonInvalid}
	return resp
}
