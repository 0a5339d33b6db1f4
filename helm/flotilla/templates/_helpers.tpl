{{/* Names, labels, images and the token: shared by every object of the release. */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name, not yet cut to a length: fullnameOverride, else the release name
(when it already holds the chart's name), else "<release>-<name>". Objects are named with
flotilla.componentName, which keeps each name within its Kubernetes limit.
*/}}
{{- define "flotilla.fullname" -}}
{{- $base := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $base = .Values.fullnameOverride -}}
{{- else -}}
{{- $name := include "flotilla.name" . -}}
{{- if contains $name .Release.Name -}}
{{- $base = .Release.Name -}}
{{- else -}}
{{- $base = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $base) -}}
{{- fail (printf "the object names would start with %q: Service names must start with a letter and hold only a-z, 0-9 and '-' (set fullnameOverride)" $base) -}}
{{- end -}}
{{- $base -}}
{{- end -}}

{{/*
"<fullname>-<suffix>" within .max characters. A longer one keeps the suffix readable and
replaces the end of the base name by 8 characters of its sha256, so two long release names
never collide. StatefulSets: 52 (the controller-revision-hash label is "<name>-<hash>",
at most 63); everything else: 63 (a DNS label).
Call with (dict "root" $ "suffix" "coordinator" "max" 52).
*/}}
{{- define "flotilla.componentName" -}}
{{- $base := include "flotilla.fullname" .root -}}
{{- $full := printf "%s-%s" $base .suffix -}}
{{- $max := int .max -}}
{{- if le (len $full) $max -}}
{{- $full -}}
{{- else -}}
{{- $keep := int (sub (sub $max (len .suffix)) 10) -}}
{{- printf "%s-%s-%s" ($base | trunc $keep | trimSuffix "-") (sha256sum $base | trunc 8) .suffix -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.coordinatorName" -}}
{{- include "flotilla.componentName" (dict "root" . "suffix" "coordinator" "max" 52) -}}
{{- end -}}

{{- define "flotilla.etcdName" -}}
{{- include "flotilla.componentName" (dict "root" . "suffix" "etcd" "max" 52) -}}
{{- end -}}

{{- define "flotilla.labels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "flotilla.selector" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The image "repository:tag" for a container. Call with (dict "root" $ "pool" $pool) for a
worker pool (its own image wins, key by key; a cuda device adds image.cudaTagSuffix to the
default tag) or (dict "root" $) for the coordinator.
*/}}
{{- define "flotilla.image" -}}
{{- $img := .root.Values.image -}}
{{- $own := dict -}}
{{- if .pool -}}{{- $own = default dict .pool.image -}}{{- end -}}
{{- $repository := default $img.repository $own.repository -}}
{{- $tag := $own.tag -}}
{{- if not $tag -}}
{{- $tag = default .root.Chart.AppVersion $img.tag -}}
{{- if and .pool (hasPrefix "cuda" (toString .pool.device)) -}}
{{- $tag = printf "%s%s" $tag $img.cudaTagSuffix -}}
{{- end -}}
{{- end -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- end -}}

{{- define "flotilla.imagePullPolicy" -}}
{{- $own := dict -}}
{{- if .pool -}}{{- $own = default dict .pool.image -}}{{- end -}}
{{- default .root.Values.image.pullPolicy $own.pullPolicy -}}
{{- end -}}

{{/* The Secret holding the shared token, and its key. */}}
{{- define "flotilla.tokenSecret" -}}
{{- if .Values.token.existingSecret -}}
{{- .Values.token.existingSecret -}}
{{- else -}}
{{- include "flotilla.componentName" (dict "root" . "suffix" "token" "max" 63) -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.tokenKey" -}}
{{- if .Values.token.existingSecret -}}{{ .Values.token.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/*
The token's base64 as the chart's Secret holds it: token.value; else the token of the Secret
already in the cluster (lookup: install/upgrade keep it); else a new random one. Computed once
per render (remembered in .Values.token) so the Secret and the pods' checksum agree.
*/}}
{{- define "flotilla.tokenB64" -}}
{{- if not (hasKey .Values.token "_b64") -}}
{{- $b64 := "" -}}
{{- if .Values.token.value -}}
{{- $b64 = .Values.token.value | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "flotilla.tokenSecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "token") -}}
{{- $b64 = index $existing.data "token" -}}
{{- else -}}
{{- $b64 = randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.token "_b64" $b64 -}}
{{- end -}}
{{- .Values.token._b64 -}}
{{- end -}}

{{/*
The pods' checksum/token annotation: a changed token restarts them. With existingSecret the
chart sees the Secret only through lookup (install/upgrade); offline renders hash its name.
*/}}
{{- define "flotilla.tokenChecksum" -}}
{{- if .Values.token.existingSecret -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace .Values.token.existingSecret -}}
{{- if and $s $s.data -}}
{{- index $s.data .Values.token.existingSecretKey | default "" | sha256sum -}}
{{- else -}}
{{- printf "existingSecret:%s" .Values.token.existingSecret | sha256sum -}}
{{- end -}}
{{- else -}}
{{- include "flotilla.tokenB64" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* etcd client URLs, comma-separated. */}}
{{- define "flotilla.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- printf "http://%s:2379" (include "flotilla.etcdName" .) -}}
{{- else -}}
{{- required "etcd.endpoints is required when etcd.enabled is false" (join "," .Values.etcd.endpoints) -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.tls" -}}
{{- if .Values.coordinator.tls.secretName -}}true{{- end -}}
{{- end -}}

{{/* The coordinator's in-cluster address, published under the leader key. */}}
{{- define "flotilla.coordinatorAddress" -}}
{{- $scheme := ternary "https" "http" (eq (include "flotilla.tls" .) "true") -}}
{{- printf "%s://%s.%s.svc:%d" $scheme (include "flotilla.coordinatorName" .) .Release.Namespace (int .Values.coordinator.port) -}}
{{- end -}}

{{/*
One worker pool with workers.poolDefaults filled in for the keys it does not set, as JSON
(fromJson it). Key by key with hasKey, so a pool's 0, false or "" is kept as written.
*/}}
{{- define "flotilla.pool" -}}
{{- $pool := deepCopy .pool -}}
{{- range $k, $v := .root.Values.workers.poolDefaults -}}
{{- if not (hasKey $pool $k) -}}
{{- $_ := set $pool $k (deepCopy $v) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $pool "device") -}}
{{- $_ := set $pool "device" (ternary "cuda:0" "cpu" (gt (int (default 0 $pool.gpus)) 0)) -}}
{{- end -}}
{{- toJson $pool -}}
{{- end -}}

{{/* A PodDisruptionBudget's spec: minAvailable when given, else maxUnavailable. */}}
{{- define "flotilla.pdbSpec" -}}
{{- if hasKey . "minAvailable" -}}
minAvailable: {{ .minAvailable | toJson }}
{{- else if hasKey . "maxUnavailable" -}}
maxUnavailable: {{ .maxUnavailable | toJson }}
{{- else -}}
maxUnavailable: 1
{{- end -}}
{{- end -}}

{{/* The security contexts every flotilla and etcd container runs with. */}}
{{- define "flotilla.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "flotilla.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}
