{{/* Names and labels shared by every object of the release. */}}

{{- define "flotilla.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flotilla.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flotilla.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* The Secret holding the shared token. */}}
{{- define "flotilla.tokenSecret" -}}
{{- if .Values.token.existingSecret -}}
{{- .Values.token.existingSecret -}}
{{- else -}}
{{- printf "%s-token" (include "flotilla.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* etcd client URLs, comma-separated. */}}
{{- define "flotilla.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- printf "http://%s-etcd:2379" (include "flotilla.fullname" .) -}}
{{- else -}}
{{- required "etcd.endpoints is required when etcd.enabled is false" (join "," .Values.etcd.endpoints) -}}
{{- end -}}
{{- end -}}

{{/* The coordinator's in-cluster address, published under the leader key. */}}
{{- define "flotilla.coordinatorAddress" -}}
{{- $scheme := ternary "https" "http" (ne .Values.coordinator.tls.secretName "") -}}
{{- printf "%s://%s-coordinator.%s.svc:%d" $scheme (include "flotilla.fullname" .) .Release.Namespace (int .Values.coordinator.port) -}}
{{- end -}}
