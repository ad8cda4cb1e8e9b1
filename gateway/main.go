// Command keyward-gateway is keyward's REST sidecar: a grpc-gateway reverse proxy that turns JSON
// over HTTP/1.1 into keyward's gRPC calls. The routes come from gateway/keyward.yaml (compiled into
// the generated *.pb.gw.go files by scripts/gateway.sh); this file only wires them up, maps gRPC
// errors to HTTP answers that keep keyward's stable reasons, and runs the HTTP server.
//
// It is built offline against Debian's Go packages (grpc-gateway v1, golang/protobuf 1.3, grpc-go
// 1.33) in GOPATH mode, so it uses only their APIs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/golang/protobuf/ptypes"
	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	keywardv1 "keyward/gen/keywardv1"
)

// The marshaler for request and response bodies: proto field names (snake_case, as in the
// protos and the OpenAPI file), enums as names, and fields at their default value included so
// clients see `"pending_verification": false` rather than nothing.
var marshaler = &runtime.JSONPb{OrigName: true, EmitDefaults: true}

func main() {
	listen := flag.String("listen", ":8080", "HTTP listen address")
	endpoint := flag.String("grpc-endpoint", "localhost:50051", "keyward's gRPC address (plaintext)")
	shutdownGrace := flag.Duration("shutdown-grace", 15*time.Second, "how long SIGTERM waits for in-flight requests")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC)

	// One connection to keyward, shared by every route. Dialing is lazy: the gateway starts even
	// when keyward is not up yet, and calls answer 503 until it is.
	conn, err := grpc.Dial(*endpoint, grpc.WithInsecure())
	if err != nil {
		log.Fatalf("keyward-gateway: cannot dial %s: %v", *endpoint, err)
	}
	defer conn.Close()

	runtime.HTTPError = writeGRPCError
	runtime.OtherErrorHandler = writeRoutingError
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithIncomingHeaderMatcher(forwardHeader),
	)
	ctx := context.Background()
	for name, register := range map[string]func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		"AuthService": keywardv1.RegisterAuthServiceHandler,
		"OtpService":  keywardv1.RegisterOtpServiceHandler,
		"OrgService":  keywardv1.RegisterOrgServiceHandler,
		"UserService": keywardv1.RegisterUserServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			log.Fatalf("keyward-gateway: registering %s: %v", name, err)
		}
	}

	root := http.NewServeMux()
	// Liveness: the gateway process answers.
	root.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	// Readiness: keyward itself reports SERVING (grpc.health.v1), so a load balancer only sends
	// traffic to a gateway whose keyward can answer.
	health := healthpb.NewHealthClient(conn)
	root.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not serving"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "serving"})
	})
	root.Handle("/", mux)

	server := &http.Server{
		Addr:              *listen,
		Handler:           root,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.ListenAndServe() }()
	log.Printf("keyward-gateway: listening on %s, forwarding to %s", *listen, *endpoint)

	// SIGTERM (Kubernetes) or ctrl-c: stop accepting, let in-flight requests finish, exit 0.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-serveErr:
		log.Fatalf("keyward-gateway: %v", err)
	case sig := <-signals:
		log.Printf("keyward-gateway: %v received, draining for up to %v", sig, *shutdownGrace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *shutdownGrace)
	defer cancel()
	if err := server.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("keyward-gateway: shutdown: %v", err)
		os.Exit(1)
	}
	log.Printf("keyward-gateway: stopped")
}

// forwardHeader decides which HTTP request headers become gRPC metadata, on top of what the
// gateway always sends: `authorization` (the bearer token), `x-forwarded-for` (the client
// address, with the peer the gateway saw appended last — keyward reads that last hop when
// `trust_forwarded_for` is on) and `x-forwarded-host`.
func forwardHeader(key string) (string, bool) {
	switch strings.ToLower(key) {
	// Trace context, so keyward's spans join the caller's trace.
	case "traceparent", "tracestate":
		return strings.ToLower(key), true
	}
	// The default: Grpc-Metadata-* without the prefix, standard headers (User-Agent, ...) as
	// grpcgateway-<name>; keyward takes the client's user agent from grpcgateway-user-agent.
	return runtime.DefaultHeaderMatcher(key)
}

// httpStatus is keyward's mapping of gRPC codes to HTTP, written out rather than taken from the
// library so that it does not change under us between grpc-gateway versions.
func httpStatus(code codes.Code) int {
	switch code {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.FailedPrecondition:
		return http.StatusPreconditionFailed
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499 // client closed request
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default: // Unknown, Internal, DataLoss
		return http.StatusInternalServerError
	}
}

// codeNames are the canonical upper-case names of gRPC codes (google.rpc.Code), as clients of
// other Google-style REST APIs expect them in `status`.
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

func codeName(code codes.Code) string {
	if name, ok := codeNames[code]; ok {
		return name
	}
	return "UNKNOWN"
}

// errorBody is what every failed call answers:
//
//	{"code":16,"status":"UNAUTHENTICATED","reason":"INVALID_CREDENTIALS","message":"...",
//	 "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",...}]}
//
// `reason` is keyward's stable ErrorInfo reason lifted to the top so clients can switch on it
// without digging through details; for errors made by the gateway itself (malformed JSON, keyward
// unreachable, unknown route) it is the status name. `field_violations` repeats the BadRequest
// detail and `retry_after_seconds` the RetryInfo detail (also sent as the Retry-After header).
type errorBody struct {
	Code              int32             `json:"code"`
	Status            string            `json:"status"`
	Reason            string            `json:"reason"`
	Message           string            `json:"message"`
	FieldViolations   []fieldViolation  `json:"field_violations,omitempty"`
	RetryAfterSeconds *int64            `json:"retry_after_seconds,omitempty"`
	Details           []json.RawMessage `json:"details"`
}

type fieldViolation struct {
	Field       string `json:"field"`
	Description string `json:"description"`
}

// writeGRPCError answers a call whose gRPC side failed (runtime.HTTPError).
func writeGRPCError(ctx context.Context, mux *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	s, ok := status.FromError(err)
	if !ok {
		s = status.New(codes.Unknown, err.Error())
	}
	body := errorBody{
		Code:    int32(s.Code()),
		Status:  codeName(s.Code()),
		Reason:  codeName(s.Code()),
		Message: s.Message(),
		Details: []json.RawMessage{},
	}
	for _, detail := range s.Proto().GetDetails() {
		if raw, err := marshaler.Marshal(detail); err == nil {
			body.Details = append(body.Details, raw)
		} else {
			log.Printf("keyward-gateway: cannot render error detail %s: %v", detail.GetTypeUrl(), err)
		}
	}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if d.GetReason() != "" {
				body.Reason = d.GetReason()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				body.FieldViolations = append(body.FieldViolations, fieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			if delay, err := ptypes.Duration(d.GetRetryDelay()); err == nil && delay >= 0 {
				// Whole seconds, rounded up: retrying a little late is fine, early is not.
				seconds := int64((delay + time.Second - 1) / time.Second)
				body.RetryAfterSeconds = &seconds
				w.Header().Set("Retry-After", strconv.FormatInt(seconds, 10))
			}
		}
	}
	// Response headers keyward sent before failing (as Grpc-Metadata-*), like the default handler.
	if md, ok := runtime.ServerMetadataFromContext(ctx); ok {
		for k, vs := range md.HeaderMD {
			for _, v := range vs {
				w.Header().Add(runtime.MetadataHeaderPrefix+k, v)
			}
		}
	}
	writeJSON(w, httpStatus(s.Code()), body)
}

// writeRoutingError answers requests that match no route (404) or a route with another method
// (405), in the same shape as every other error.
func writeRoutingError(w http.ResponseWriter, _ *http.Request, msg string, httpCode int) {
	code, reason := codes.Unknown, "UNKNOWN"
	switch httpCode {
	case http.StatusNotFound:
		code, reason = codes.NotFound, "ROUTE_NOT_FOUND"
	case http.StatusMethodNotAllowed:
		code, reason = codes.Unimplemented, "METHOD_NOT_ALLOWED"
	case http.StatusBadRequest:
		code, reason = codes.InvalidArgument, "INVALID_ARGUMENT"
	}
	writeJSON(w, httpCode, errorBody{
		Code:    int32(code),
		Status:  codeName(code),
		Reason:  reason,
		Message: strings.ToLower(msg),
		Details: []json.RawMessage{},
	})
}

func writeJSON(w http.ResponseWriter, httpCode int, body interface{}) {
	buf, err := json.Marshal(body)
	if err != nil {
		log.Printf("keyward-gateway: cannot encode response: %v", err)
		buf = []byte(`{"code":13,"status":"INTERNAL","reason":"INTERNAL","message":"internal error","details":[]}`)
		httpCode = http.StatusInternalServerError
	}
	w.Header().Del("Trailer")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	if _, err := w.Write(buf); err != nil {
		log.Printf("keyward-gateway: writing response: %v", err)
	}
}
