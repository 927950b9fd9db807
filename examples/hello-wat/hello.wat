;; hello-wat is Magnetar's smallest example WebAssembly workload, written by
;; hand in the WebAssembly text format (WASI preview 1, one 64 KiB page of
;; linear memory, a few hundred bytes once assembled with wabt's wat2wasm):
;;
;;   hello.wasm          print "Hello from WebAssembly (WAT)!" and exit 0
;;   hello.wasm ARG...   print it, then sleep until stopped
;;
;; The benchmarks use it for the time until a container's first output and
;; the memory an extra pod costs; examples/hello-wasm is the same workload
;; built by Go (a few MB).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1 1)

  ;; 0: iovec {base, len}; 8: bytes written; 16: argc; 20: argv size;
  ;; 64: the greeting; 128: a clock subscription (48 bytes); 256: its
  ;; event (32 bytes); 320: number of events.
  (data (i32.const 64) "Hello from WebAssembly (WAT)!\n")

  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 30))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (if (i32.gt_u (i32.load (i32.const 16)) (i32.const 1))
      (then
        ;; subscription: userdata 0, tag 0 (clock), clock 1 (monotonic),
        ;; timeout one hour, relative
        (i32.store8 (i32.const 136) (i32.const 0))
        (i32.store (i32.const 144) (i32.const 1))
        (i64.store (i32.const 152) (i64.const 3600000000000))
        (loop $sleep
          (drop (call $poll_oneoff (i32.const 128) (i32.const 256) (i32.const 1) (i32.const 320)))
          (br $sleep))))))
