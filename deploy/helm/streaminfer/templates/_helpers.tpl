{{/* Names and labels shared by every object of a release. */}}

{{- define "streaminfer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streaminfer.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (server or worker): pass (list $ "server"). */}}
{{- define "streaminfer.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "streaminfer.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "streaminfer.kafkaSecret" -}}
{{- .Values.kafka.existingSecret | default (printf "%s-kafka" (include "streaminfer.fullname" .)) -}}
{{- end -}}

{{/* The worker's maximum: maxReplicas, else the input topic's partitions; never more. */}}
{{- define "streaminfer.workerMaxReplicas" -}}
{{- $w := .Values.worker -}}
{{- $max := int ($w.autoscaling.maxReplicas | default $w.inputPartitions) -}}
{{- if gt $max (int $w.inputPartitions) -}}
{{- fail (printf "worker.autoscaling.maxReplicas (%d) exceeds worker.inputPartitions (%d): workers past the partition count stay idle" $max (int $w.inputPartitions)) -}}
{{- end -}}
{{- $max -}}
{{- end -}}

{{/* Volumes and mounts both components share: Kafka client properties, models, /tmp. */}}
{{- define "streaminfer.volumes" -}}
- name: kafka
  secret:
    secretName: {{ include "streaminfer.kafkaSecret" . }}
    items:
      - key: client.properties
        path: client.properties
      - key: ca
        path: ca.pem
- name: tmp
  emptyDir: {}
{{- if .Values.models.volume }}
- name: models
  {{- toYaml .Values.models.volume | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "streaminfer.volumeMounts" -}}
- name: kafka
  mountPath: /etc/streaminfer/kafka
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.models.volume }}
- name: models
  mountPath: {{ .Values.models.path }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "streaminfer.kafkaArgs" -}}
- --bootstrap-servers
- {{ .Values.kafka.bootstrapServers | quote }}
- --properties-file
- /etc/streaminfer/kafka/client.properties
{{- end -}}
