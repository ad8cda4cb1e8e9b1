{{/* Chart name, overridable. */}}
{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name added unless the release already has it. */}}
{{- define "keyward.fullname" -}}
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

{{- define "keyward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyward.labels" -}}
helm.sh/chart: {{ include "keyward.chart" . }}
{{ include "keyward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keyward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" of an image block; the tag defaults to the chart's appVersion. */}}
{{- define "keyward.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/*
One keyward setting as an environment value: lists joined by commas (keyward's form for
verification_keys), numbers as integers (values arrive as floats), everything else as text.
*/}}
{{- define "keyward.envValue" -}}
{{- if kindIs "slice" . }}
{{- join "," . }}
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Where the signing-key Secret is mounted; KEYWARD_SIGNING_KEY_FILE names the file in it. */}}
{{- define "keyward.signingKeyDir" -}}
/etc/keyward/signing-key
{{- end }}

{{/*
The keyward container's secret settings: the signing key as a file (see keyward.signingKeyVolume)
and the other secrets as environment values from secretKeyRefs. An entry whose name is "" is left
out.
*/}}
{{- define "keyward.secretEnv" -}}
- name: KEYWARD_SIGNING_KEY_FILE
  value: {{ printf "%s/signing_key" (include "keyward.signingKeyDir" .) | quote }}
{{- $secrets := .Values.secrets }}
{{- range $setting, $ref := dict "MONGODB_URI" $secrets.mongodbUri "SMTP_URL" $secrets.smtpUrl "CODE_SECRET" $secrets.codeSecret }}
{{- if and $ref $ref.name }}
- name: KEYWARD_{{ $setting }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The signing-key Secret as a read-only volume holding one file, signing_key. */}}
{{- define "keyward.signingKeyVolume" -}}
- name: signing-key
  secret:
    secretName: {{ .Values.secrets.signingKey.name }}
    items:
      - key: {{ .Values.secrets.signingKey.key }}
        path: signing_key
    # Owner and group only; the group is podSecurityContext.fsGroup.
    defaultMode: 0440
{{- end }}

{{- define "keyward.signingKeyMount" -}}
- name: signing-key
  mountPath: {{ include "keyward.signingKeyDir" . }}
  readOnly: true
{{- end }}

{{/*
Labels of the hook pods (migrate Job, helm test): the release and a component, but not
app.kubernetes.io/name, so the Service, the PodDisruptionBudget and the NetworkPolicy, which
select keyward's pods by name and instance, never count them. Takes (list component root).
*/}}
{{- define "keyward.hookLabels" -}}
{{- $component := index . 0 }}
{{- $root := index . 1 -}}
helm.sh/chart: {{ include "keyward.chart" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
app.kubernetes.io/part-of: {{ include "keyward.name" $root }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end }}

{{/*
keyward's settings from `config` as inline environment values, for pods that run before the
ConfigMap exists (the pre-install migrate Job).
*/}}
{{- define "keyward.configEnv" -}}
{{- range $key, $value := .Values.config }}
{{- if not (kindIs "invalid" $value) }}
- name: KEYWARD_{{ upper $key }}
  value: {{ include "keyward.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}
