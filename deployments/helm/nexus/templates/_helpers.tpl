{{/* Chart name. */}}
{{- define "nexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "nexus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nexus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
{{ include "nexus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nexus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nexus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret whose keys become the gateway's environment, if any. */}}
{{- define "nexus.secretName" -}}
{{- if .Values.secret.create }}
{{- include "nexus.fullname" . }}
{{- else }}
{{- .Values.secret.existingSecret }}
{{- end }}
{{- end }}

{{/* The config file: the user's config with the listeners and shutdown timings the pod needs. */}}
{{/* The TLS Secret's name. */}}
{{- define "nexus.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "nexus.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "nexus.configYaml" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $server := dict "listen" "0.0.0.0:8080" "admin_listen" "0.0.0.0:9090" "shutdown" (dict "drain_delay" (printf "%ds" (int .Values.shutdown.drainDelaySeconds)) "grace_period" (printf "%ds" (int .Values.shutdown.gracePeriodSeconds))) }}
{{- if .Values.tls.enabled }}
{{- $cert := dict "cert_file" "/etc/nexus-tls/tls.crt" "key_file" "/etc/nexus-tls/tls.key" }}
{{- $_ := set $server "tls" (dict "listen" (printf "0.0.0.0:%d" (int .Values.tls.port)) "certificates" (list $cert) "min_version" .Values.tls.minVersion) }}
{{- end }}
{{- $_ := set $cfg "server" (merge $server (default (dict) $cfg.server)) }}
{{- toYaml $cfg }}
{{- end }}
