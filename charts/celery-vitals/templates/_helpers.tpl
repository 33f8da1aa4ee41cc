{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "celery-vitals.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; it contains "celery-vitals" unless overridden, and with a
ServiceMonitor it becomes the job label CeleryExporterDown matches. */}}
{{- define "celery-vitals.fullname" -}}
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

{{- define "celery-vitals.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-vitals.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "celery-vitals.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "celery-vitals.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: celery-vitals
{{- end }}

{{/* The Secret holding the broker URL. */}}
{{- define "celery-vitals.brokerSecret" -}}
{{- .Values.broker.existingSecret | default (printf "%s-broker" (include "celery-vitals.fullname" .)) }}
{{- end }}

{{/* The Secret holding web.yml. */}}
{{- define "celery-vitals.webConfigSecret" -}}
{{- .Values.webConfig.existingSecret | default (printf "%s-web-config" (include "celery-vitals.fullname" .)) }}
{{- end }}

{{/* HTTPS when the web config turns TLS on. */}}
{{- define "celery-vitals.scheme" -}}
{{- if and .Values.webConfig.enabled (or .Values.webConfig.tlsSecret (hasKey .Values.webConfig.config "tls_server_config")) }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/*
The label matchers of every series the rules and dashboards read:
prometheusRule.selector, or the jobs Prometheus Operator gives this release's
ServiceMonitor (the Service's name) and worker PodMonitor (namespace/name).
*/}}
{{- define "celery-vitals.selector" -}}
{{- $fullname := include "celery-vitals.fullname" . -}}
{{- .Values.prometheusRule.selector | default (printf "job=~%s" (printf "%s|%s/%s-workers" $fullname .Release.Namespace $fullname | toJson)) -}}
{{- end }}
