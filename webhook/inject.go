package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/inject"
)

// maxBody bounds an AdmissionReview; the API server's own limit on
// objects is 3 MiB.
const maxBody = 4 << 20

// injectHandler is the mutating webhook for Pod CREATE.
type injectHandler struct{ s *Server }

// ServeHTTP answers an AdmissionReview v1. Only a pod that is wrong (a
// bad annotation, a reserved name) is denied; the server's own failures
// (the namespace cannot be read) answer 500, so the API server applies
// the webhook's failurePolicy, the administrator's choice.
func (h injectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "webhook: POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(w, "webhook: admission review too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "webhook: not an AdmissionReview v1", http.StatusBadRequest)
		return
	}
	resp, err := h.review(r, review.Request)
	if err != nil {
		h.s.cfg.Logger.Error("injection failed; the API server applies the failure policy", "pod", podName(review.Request), "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	review.Response, review.Request = resp, nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&review)
}

func (h injectHandler) review(r *http.Request, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		// A configuration sending more than Pod CREATE is allowed through
		// unchanged rather than blocking the cluster.
		setResult(r, "ignored")
		return resp, nil
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return nil, fmt.Errorf("webhook: pod %s: %w", podName(req), err)
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace // set from the URL, not the body
	}
	labels, err := h.s.cfg.NamespaceLabels(r.Context(), pod.Namespace)
	if err != nil {
		return nil, fmt.Errorf("webhook: namespace %s of pod %s: %w", pod.Namespace, podName(req), err)
	}
	res, err := h.s.cfg.Injector.Inject(&pod, labels)
	var pe *inject.PodError
	switch {
	case errors.As(err, &pe):
		setResult(r, "denied")
		h.s.cfg.Logger.Info("pod refused", "pod", podName(req), "reason", err.Error())
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid, Message: err.Error()}
		return resp, nil
	case err != nil:
		return nil, err
	case res.Skipped != "":
		setResult(r, "skipped")
		h.s.cfg.Logger.Debug("pod not injected", "pod", podName(req), "reason", res.Skipped)
		return resp, nil
	}
	setResult(r, "injected")
	h.s.cfg.Logger.Info("pod injected", "pod", podName(req), "warnings", res.Warnings)
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType, resp.Warnings = res.Patch, &pt, res.Warnings
	return resp, nil
}

// podName names a pod in logs: pods of Deployments have only
// generateName when they are created.
func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Namespace + "/" + req.Name
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	_ = json.Unmarshal(req.Object.Raw, &meta)
	return req.Namespace + "/" + meta.Metadata.GenerateName + "*"
}
