{{/* What the code decides (files/generated.yaml, `paystream k8s generate`). */}}
{{- define "paystream.generated" -}}
{{- .Files.Get "files/generated.yaml" -}}
{{- end -}}

{{- define "paystream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paystream.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "paystream.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Strimzi resources name their cluster in this label. */}}
{{- define "paystream.strimziCluster" -}}
strimzi.io/cluster: {{ .Values.kafka.name }}
{{- end -}}

{{- define "paystream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "paystream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "paystream.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* The Secret Strimzi's User Operator writes for a principal (key `password`). */}}
{{- define "paystream.userSecret" -}}
{{ .root.Values.kafka.userSecretPrefix }}{{ .principal }}
{{- end -}}

{{/* Environment every paystream process gets: where the stack is, and no secret. */}}
{{- define "paystream.env" -}}
- name: PAYSTREAM_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: PAYSTREAM_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PAYSTREAM_LOG_FORMAT
  value: json
- name: PAYSTREAM_HOME
  value: /var/lib/paystream
- name: PAYSTREAM_BOOTSTRAP_SERVERS
  value: {{ printf "%s-kafka-bootstrap:%v" .Values.kafka.name .Values.kafka.listener.port | quote }}
- name: PAYSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ ternary "SASL_SSL" "SASL_PLAINTEXT" .Values.kafka.listener.tls | quote }}
- name: PAYSTREAM_KAFKA_SASL_MECHANISM
  value: {{ (include "paystream.generated" . | fromYaml).saslMechanism | quote }}
- name: PAYSTREAM_KAFKA_SECRETS_DIR
  value: /run/kafka-secrets
- name: PAYSTREAM_REGISTRY_URL
  value: {{ printf "http://%s-registry:8080/apis/ccompat/v7" (include "paystream.fullname" .) | quote }}
- name: PAYSTREAM_POSTGRES_DSN
  value: {{ .Values.postgres.dsn | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.postgres.passwordSecret.name }}, key: {{ .Values.postgres.passwordSecret.key }}}
{{- if .Values.redis.urlSecret.name }}
- name: PAYSTREAM_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.urlSecret.name }}, key: {{ .Values.redis.urlSecret.key }}}
{{- else }}
- name: PAYSTREAM_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
- name: PAYSTREAM_METRICS_HOST
  value: 0.0.0.0
- name: PAYSTREAM_OTEL_ENABLED
  value: {{ .Values.tracing.enabled | quote }}
{{- if .Values.tracing.enabled }}
- name: PAYSTREAM_OTEL_ENDPOINT
  value: {{ .Values.tracing.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.endpoint | quote }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}
