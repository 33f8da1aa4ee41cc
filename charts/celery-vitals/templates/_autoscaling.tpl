{{/*
The PromQL of workerAutoscaling (templates/scaledobject.yaml); docs/deploy.md,
"Autoscaling the workers", explains each line, and tests/deploy/test_autoscaling.py
evaluates them on Prometheus. Strings are quoted as Go (and so PromQL) reads them.
*/}}

{{/* The namespace of the worker Deployment, where the ScaledObject goes. */}}
{{- define "celery-vitals.autoscaling.namespace" -}}
{{- .Values.workerAutoscaling.namespace | default .Release.Namespace -}}
{{- end }}

{{/* The ScaledObject's name: the release's, then the Deployment's. */}}
{{- define "celery-vitals.autoscaling.name" -}}
{{- printf "%s-%s" (include "celery-vitals.fullname" .) .Values.workerAutoscaling.deployment | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The broker label value: workerAutoscaling.broker, else the exporter's --broker-name. */}}
{{- define "celery-vitals.autoscaling.broker" -}}
{{- $config := .Values.config | default dict -}}
{{- .Values.workerAutoscaling.broker | default (index $config "broker-name") | default (index $config "--broker-name") | default "" -}}
{{- end }}

{{/* broker="..." */}}
{{- define "celery-vitals.autoscaling.brokerMatcher" -}}
broker={{ include "celery-vitals.autoscaling.broker" . | quote }}
{{- end }}

{{/* broker="...", queue_name=~"a|b": the listed queues, each name regex-escaped. */}}
{{- define "celery-vitals.autoscaling.queueMatchers" -}}
{{- $names := list -}}
{{- range .Values.workerAutoscaling.queues }}{{ $names = append $names (regexQuoteMeta .) }}{{ end -}}
{{ include "celery-vitals.autoscaling.brokerMatcher" . }}, queue_name=~{{ join "|" $names | quote }}
{{- end }}

{{/* broker="...", and the matchers of the Deployment's agents. */}}
{{- define "celery-vitals.autoscaling.workerMatchers" -}}
{{- $a := .Values.workerAutoscaling -}}
{{ include "celery-vitals.autoscaling.brokerMatcher" . }}, {{ if $a.poolUtilisation.workerSelector }}{{ $a.poolUtilisation.workerSelector }}{{ else }}namespace={{ include "celery-vitals.autoscaling.namespace" . | quote }}, pod=~{{ printf "%s-[a-z0-9]+-[a-z0-9]+" (regexQuoteMeta $a.deployment) | quote }}{{ end }}
{{- end }}

{{/*
Ready messages in the listed queues (one value per queue even when two exporters poll
it), 0 when they are all empty; nothing (a failed query, KEDA's fallback) unless the
exporter reaches the broker and polls every listed queue.
*/}}
{{- define "celery-vitals.autoscaling.backlogQuery" -}}
{{- $queues := include "celery-vitals.autoscaling.queueMatchers" . -}}
(
  sum(max by (queue_name) (celery_queue_length{ {{- $queues -}} }))
  or vector(0)
)
and on () (max(celery_broker_up{ {{- include "celery-vitals.autoscaling.brokerMatcher" . -}} }) == 1)
and on () (count(max by (queue_name) (celery_queue_exists{ {{- $queues -}} })) == {{ len .Values.workerAutoscaling.queues }})
{{- end }}

{{/*
Busy pool processes of the Deployment's workers in whole workers (busy processes over
the mean pool size of the workers that report them); 0 when no worker reports.
*/}}
{{- define "celery-vitals.autoscaling.utilisationQuery" -}}
{{- $workers := include "celery-vitals.autoscaling.workerMatchers" . -}}
(
  sum(celery_worker_pool_busy_processes{ {{- $workers -}} })
  /
  avg(
    celery_worker_pool_processes{ {{- $workers -}} }
    and celery_worker_pool_busy_processes{ {{- $workers -}} }
  )
)
or vector(0)
{{- end }}
