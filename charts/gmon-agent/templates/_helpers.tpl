{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "gmon-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless it contains it. */}}
{{- define "gmon-agent.fullname" -}}
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

{{- define "gmon-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gmon-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gmon-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gmon-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gmon-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gmon-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gmon-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The agent's config file (its --config YAML), from the values. Only what is
set is written, so the agent's own defaults and OTEL_* variables apply to
the rest.
*/}}
{{- define "gmon-agent.config" -}}
{{- $c := dict "scope" .Values.selection.scope }}
{{- with .Values.selection.include }}{{ $_ := set $c "include" . }}{{ end }}
{{- with .Values.selection.exclude }}{{ $_ := set $c "exclude" . }}{{ end }}
{{- $k := dict }}
{{- with .Values.kubernetes.includeNamespaces }}{{ $_ := set $k "include_namespaces" . }}{{ end }}
{{- with .Values.kubernetes.excludeNamespaces }}{{ $_ := set $k "exclude_namespaces" . }}{{ end }}
{{- with .Values.kubernetes.podLabels }}{{ $_ := set $k "pod_labels" . }}{{ end }}
{{- with .Values.kubernetes.podAnnotations }}{{ $_ := set $k "pod_annotations" . }}{{ end }}
{{- if $k }}{{ $_ := set $c "kubernetes" $k }}{{ end }}
{{- $o := .Values.otlp }}
{{- if $o.endpoint }}
{{- $otlp := dict "endpoint" $o.endpoint "protocol" $o.protocol "interval" $o.interval "timeout" $o.timeout "histogram" $o.histogram "max_sites" $o.maxSites "max_series" $o.maxSeries "logs" $o.logs "compression" $o.compression "temporality" $o.temporality }}
{{- with $o.headers }}{{ $_ := set $otlp "headers" . }}{{ end }}
{{- with $o.resourceAttributes }}{{ $_ := set $otlp "resource_attributes" . }}{{ end }}
{{- $_ := set $c "otlp" $otlp }}
{{- end }}
{{- toYaml $c }}
{{- end }}
