{{/*
Names shared by several templates. They are fixed, not derived from the
release name: the controller's flags, the proxies' --controller-id and the
RBAC resourceNames must all agree on them, and the webhook configurations and
ClusterRoles are cluster-wide, so one cluster holds one mesh release.
*/}}

{{- define "mesh.controllerName" -}}mesh-controller{{- end }}
{{- define "mesh.webhookService" -}}mesh-webhook{{- end }}
{{- define "mesh.injectorConfigMap" -}}mesh-injector{{- end }}
{{- define "mesh.mutatingWebhook" -}}mesh-injector{{- end }}
{{- define "mesh.validatingWebhook" -}}mesh-policy-validator{{- end }}
{{- define "mesh.trustBundleConfigMap" -}}mesh-trust-bundle{{- end }}

{{/* Ports the controller listens on; the Services and probes name them. */}}
{{- define "mesh.identityPort" -}}15012{{- end }}
{{- define "mesh.metricsPort" -}}15014{{- end }}
{{- define "mesh.webhookPort" -}}9443{{- end }}

{{/* The injector configuration file's directory and name. */}}
{{- define "mesh.injectorConfigDir" -}}/etc/mesh/injector{{- end }}

{{/* The CA Secret the controller reads: its own or the user's. */}}
{{- define "mesh.caSecret" -}}
{{- if eq .Values.ca.source "existingSecret" -}}
{{- required "ca.existingSecret is required when ca.source is existingSecret" .Values.ca.existingSecret -}}
{{- else -}}
{{- .Values.ca.secretName -}}
{{- end -}}
{{- end }}

{{/* Labels on every object. */}}
{{- define "mesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: mesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The controller pods' selector: stable across upgrades. */}}
{{- define "mesh.controllerSelector" -}}
app.kubernetes.io/name: mesh-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* image returns repository:tag, the tag defaulting to the appVersion. */}}
{{- define "mesh.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end }}

{{/* The namespaces the injection webhook never sees: the values' and the release's. */}}
{{- define "mesh.excludedNamespaces" -}}
{{- $ns := list .Release.Namespace -}}
{{- range .Values.injector.excludeNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toJson ($ns | uniq | sortAlpha) -}}
{{- end }}
