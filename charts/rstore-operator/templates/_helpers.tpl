{{/*
Chart name, overridable.
*/}}
{{- define "rstore-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the operator's objects: the release name when it already contains the chart
name (so `helm install rstore-operator ...` does not give rstore-operator-rstore-operator).
*/}}
{{- define "rstore-operator.fullname" -}}
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

{{- define "rstore-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the chart.
*/}}
{{- define "rstore-operator.labels" -}}
helm.sh/chart: {{ include "rstore-operator.chart" . }}
{{ include "rstore-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rstore
{{- end }}

{{/*
Selector labels of the operator pods. The component label keeps them apart from the store
pods, which carry app.kubernetes.io/name=rstore.
*/}}
{{- define "rstore-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rstore-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "rstore-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rstore-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rstore-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Labels that the operator puts on every store pod (the interface contract with the operator).
*/}}
{{- define "rstore-operator.storeSelector" -}}
app.kubernetes.io/name: rstore
app.kubernetes.io/managed-by: rstore-operator
app.kubernetes.io/component: store
{{- end }}

{{/*
Labels of the monitoring objects.
*/}}
{{- define "rstore-operator.monitoringLabels" -}}
{{ include "rstore-operator.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
