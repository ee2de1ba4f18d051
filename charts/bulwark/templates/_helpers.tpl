{{/*
Names. They are fixed, not derived from the release name: the operator's defaults
(operator/src/cli.rs) use the same names, the RBAC rules name some of these objects, and the
cluster-scoped objects (ClusterRole, webhook configuration) admit one Bulwark per cluster.
*/}}
{{- define "bulwark.operatorName" -}}bulwark-operator{{- end -}}
{{- define "bulwark.leaseName" -}}bulwark-operator{{- end -}}
{{- define "bulwark.tlsSecretName" -}}bulwark-operator-tls{{- end -}}
{{- define "bulwark.signingKeysSecretName" -}}bulwark-webhook-signing-keys{{- end -}}
{{- define "bulwark.webhookConfigurationName" -}}bulwark-sidecar-injector{{- end -}}
{{- define "bulwark.validatingWebhookConfigurationName" -}}bulwark-validation{{- end -}}
{{- define "bulwark.redisSecretName" -}}bulwark-redis{{- end -}}

{{/* Chart name and version, as the helm.sh/chart label wants them. */}}
{{- define "bulwark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator's pods (never change them: Deployment selectors are immutable). */}}
{{- define "bulwark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bulwark.operatorName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "bulwark.labels" -}}
{{ include "bulwark.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: bulwark
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "bulwark.chart" . }}
{{- end -}}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "bulwark.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Whether the operator gets a Redis URL, and from which Secret and key. */}}
{{- define "bulwark.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret.name -}}true{{- end -}}
{{- end -}}
{{- define "bulwark.redisSecretRef" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret.name -}}
{{- fail "redis.url and redis.existingSecret.name are mutually exclusive: set one" -}}
{{- end -}}
{{- if .Values.redis.existingSecret.name -}}
name: {{ .Values.redis.existingSecret.name }}
key: {{ required "redis.existingSecret.key is required with redis.existingSecret.name" .Values.redis.existingSecret.key }}
{{- else -}}
name: {{ include "bulwark.redisSecretName" . }}
key: url
{{- end -}}
{{- end -}}
