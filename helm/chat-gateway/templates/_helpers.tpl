{{/* Names and labels. */}}
{{- define "chat-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat-gateway.fullname" -}}
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

{{/* A name derived from the fullname, kept within 63 characters. */}}
{{- define "chat-gateway.child" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "chat-gateway.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" }}
{{- end }}

{{- define "chat-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "chat-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the gateway pods. */}}
{{- define "chat-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Selector of the dispatcher pods. */}}
{{- define "chat-gateway.dispatcherSelectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dispatcher
{{- end }}

{{- define "chat-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chat-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chat-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "chat-gateway.dispatcherImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.dispatcher.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.dispatcher.image.tag) }}
{{- end }}

{{- define "chat-gateway.headlessName" -}}
{{- include "chat-gateway.child" (list . "headless") }}
{{- end }}

{{- define "chat-gateway.secretName" -}}
{{- default (include "chat-gateway.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* "true" when the cluster bus (Redis) is configured, else empty. */}}
{{- define "chat-gateway.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.clusterNodes .Values.redis.secret.name }}true{{ end }}
{{- end }}

{{- define "chat-gateway.scyllaEnabled" -}}
{{- if .Values.scylla.nodes }}true{{ end }}
{{- end }}

{{/* How clients authenticate: secret, publicKey, jwks, or none. */}}
{{- define "chat-gateway.jwtMode" -}}
{{- $a := .Values.auth }}
{{- if and $a.jwtPublicKey $a.jwks }}
{{- fail "auth: set jwtPublicKey or jwks, not both" }}
{{- else if $a.jwtPublicKey }}publicKey
{{- else if $a.jwks }}jwks
{{- else if or $a.jwtSecret $a.existingSecret $a.generateJwtSecret }}secret
{{- else }}none
{{- end }}
{{- end }}

{{/* "true" when the chart creates the Secret (JWT secret and/or API keys). */}}
{{- define "chat-gateway.createSecret" -}}
{{- if and (not .Values.auth.existingSecret) (or (eq (include "chat-gateway.jwtMode" .) "secret") .Values.auth.apiKey .Values.auth.apiKeys) }}true{{ end }}
{{- end }}

{{/*
A setting's value as environment text: whole numbers without an exponent
(values files give float64), lists comma-joined, booleans as true/false.
*/}}
{{- define "chat-gateway.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- $out := list }}
{{- range $v }}{{ $out = append $out (include "chat-gateway.envValue" .) }}{{ end }}
{{- join "," $out }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/* Settings of `config` that the dispatcher shares (ClusterArgs and LogArgs). */}}
{{- define "chat-gateway.clusterKeys" -}}
redis_prefix stream_shards stream_maxlen stream_max_bytes stream_max_age dedupe_window feed feed_maxlen stream_trim_interval presence_ttl persister_batch persister_wait persister_claim_idle log_format log
{{- end }}

{{/*
A humantime duration (`10s`, `1m 30s`, `500ms`, `2min`, `1h`) in
milliseconds, rounded up. Fails on text it cannot read.
*/}}
{{- define "chat-gateway.durationMs" -}}
{{- $text := trim (toString .) }}
{{- if eq $text "0" }}0{{ else }}
{{- if not (regexMatch "^([0-9]+ *[a-zµ]+ *)+$" $text) }}
{{- fail (printf "config.shutdown_grace: %q is not a duration the chart can read (use e.g. 10s, 500ms, 1m 30s)" $text) }}
{{- end }}
{{- $units := dict "ns" 0 "nsec" 0 "us" 0 "usec" 0 "µs" 0 "ms" 1 "msec" 1 "s" 1000 "sec" 1000 "secs" 1000 "second" 1000 "seconds" 1000 "m" 60000 "min" 60000 "mins" 60000 "minute" 60000 "minutes" 60000 "h" 3600000 "hr" 3600000 "hrs" 3600000 "hour" 3600000 "hours" 3600000 }}
{{- $total := 0 }}{{- $sub := 0 }}
{{- range regexFindAll "[0-9]+ *[a-zµ]+" $text -1 }}
{{- $n := regexFind "^[0-9]+" . | atoi }}
{{- $unit := regexReplaceAll "^[0-9]+ *" . "" }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "config.shutdown_grace: unit %q of %q is not one the chart reads (ms, s, m, h)" $unit $text) }}
{{- end }}
{{- $f := get $units $unit }}
{{- if eq (int $f) 0 }}{{ if gt $n 0 }}{{ $sub = 1 }}{{ end }}{{ else }}{{ $total = add $total (mul $n $f) }}{{ end }}
{{- end }}
{{- add $total $sub }}
{{- end }}
{{- end }}

{{/* config.shutdown_grace in milliseconds (binary default 10s when unset). */}}
{{- define "chat-gateway.graceMs" -}}
{{- include "chat-gateway.durationMs" (default "10s" .Values.config.shutdown_grace) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: derived, or the one given, which must be
strictly longer than the preStop sleep plus the drain limit (the kubelet
counts the preStop hook inside the grace period).
*/}}
{{- define "chat-gateway.terminationGracePeriodSeconds" -}}
{{- $t := .Values.termination }}
{{- $graceMs := include "chat-gateway.graceMs" . | atoi }}
{{- $pre := int $t.preStopSleepSeconds }}
{{- $needMs := add (mul $pre 1000) $graceMs }}
{{- if kindIs "invalid" $t.terminationGracePeriodSeconds }}
{{- add (div (add $needMs 999) 1000) (int $t.marginSeconds) }}
{{- else }}
{{- $given := int $t.terminationGracePeriodSeconds }}
{{- if le (mul $given 1000) $needMs }}
{{- fail (printf "termination.terminationGracePeriodSeconds (%ds) must be longer than termination.preStopSleepSeconds (%ds) + config.shutdown_grace (%s = %dms): the kubelet would kill pods before they drain. Raise it, or leave it null to derive it." $given $pre (toString (default "10s" .Values.config.shutdown_grace)) $graceMs) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "chat-gateway.validate" -}}
{{- $redis := include "chat-gateway.redisEnabled" . }}
{{- if and .Values.redis.url .Values.redis.clusterNodes }}
{{- fail "redis: set url or clusterNodes, not both" }}
{{- end }}
{{- if and .Values.redis.secret.name (or .Values.redis.url .Values.redis.clusterNodes) }}
{{- fail "redis: set secret or url/clusterNodes, not both" }}
{{- end }}
{{- if and .Values.redis.secret.name (not .Values.redis.secret.key) }}
{{- fail "redis.secret.key: the Secret's key holding the URL is required with redis.secret.name" }}
{{- end }}
{{- if and (not $redis) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "more than one gateway pod needs Redis (redis.url, redis.clusterNodes or redis.secret): without a shared bus each pod would be a separate chat service" }}
{{- end }}
{{- if and (eq .Values.kind "Deployment") (not $redis) }}
{{- fail "kind Deployment leases node ids in Redis: set redis.url, redis.clusterNodes or redis.secret (or use kind StatefulSet)" }}
{{- end }}
{{- if and (eq .Values.kind "Deployment") .Values.persistence.enabled }}
{{- fail "persistence.enabled needs kind StatefulSet: pods of a Deployment would share one volume, and nodes never share a data directory" }}
{{- end }}
{{- if and (eq (toString .Values.config.feed) "true") (not $redis) }}
{{- fail "config.feed needs Redis (redis.url, redis.clusterNodes or redis.secret): the event feed is Redis streams" }}
{{- end }}
{{- if and .Values.dispatcher.enabled (not (and $redis (include "chat-gateway.scyllaEnabled" .))) }}
{{- fail "dispatcher.enabled needs Redis and ScyllaDB (redis.* and scylla.nodes): it drains the streams into the CQL store" }}
{{- end }}
{{- if and (eq (include "chat-gateway.jwtMode" .) "none") (ne (toString .Values.auth.allowAnonymous) "true") }}
{{- fail "auth: no way for clients to authenticate: set auth.jwtSecret, auth.existingSecret, auth.jwtPublicKey or auth.jwks (or auth.generateJwtSecret), or auth.allowAnonymous=true to serve guests on purpose" }}
{{- end }}
{{- if and .Values.internal.enabled (eq (int .Values.internal.port) (int .Values.containerPort)) }}
{{- fail "internal.port must differ from containerPort" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling: set targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- $_ := include "chat-gateway.terminationGracePeriodSeconds" . }}
{{- end }}

{{/* A host for host:port text: IPv6 addresses in brackets. */}}
{{- define "chat-gateway.hostPort" -}}
{{- if and (contains ":" .) (not (hasPrefix "[" .)) }}{{ printf "[%s]" . }}{{ else }}{{ . }}{{ end }}
{{- end }}
