// The gRPC upstream of bench/grpc.sh: grpc-go serving grpc.health.v1.Health (status SERVING
// for every service name, "" included) and server reflection, on the loopback address given
// as the only argument. No generated code: both services come with grpc-go. It logs nothing
// per call. bench/build-grpc-upstream.sh builds it; run it with GOMAXPROCS=1.
package main

import (
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-upstream 127.0.0.1:PORT")
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatalf("listen %s: %v", os.Args[1], err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		srv.Stop()
	}()
	log.Printf("serving grpc.health.v1.Health and reflection on %s", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
