package io.magnetar.client;

import com.google.protobuf.Descriptors.ServiceDescriptor;
import com.google.protobuf.Message;
import io.grpc.MethodDescriptor;
import io.grpc.protobuf.ProtoUtils;

/**
 * gRPC method descriptors built from the service descriptors that protoc
 * generated from proto/ (the grpc-java stub generator is not used; see the
 * README). A method whose request or response type does not match the
 * generated descriptor fails at class initialization, never on the wire.
 */
final class Rpc {
  private Rpc() {}

  /** The descriptor of rpc name of svc, with protobuf marshallers for req and res. */
  static <Q extends Message, R extends Message> MethodDescriptor<Q, R> method(
      ServiceDescriptor svc, String name, Q req, R res) {
    com.google.protobuf.Descriptors.MethodDescriptor m = svc.findMethodByName(name);
    if (m == null) {
      throw new IllegalArgumentException(svc.getFullName() + " has no method " + name);
    }
    if (!m.getInputType().equals(req.getDescriptorForType())
        || !m.getOutputType().equals(res.getDescriptorForType())) {
      throw new IllegalArgumentException(m.getFullName() + ": request or response type mismatch");
    }
    MethodDescriptor.MethodType type;
    if (m.isClientStreaming() && m.isServerStreaming()) {
      type = MethodDescriptor.MethodType.BIDI_STREAMING;
    } else if (m.isClientStreaming()) {
      type = MethodDescriptor.MethodType.CLIENT_STREAMING;
    } else if (m.isServerStreaming()) {
      type = MethodDescriptor.MethodType.SERVER_STREAMING;
    } else {
      type = MethodDescriptor.MethodType.UNARY;
    }
    @SuppressWarnings("unchecked")
    Q reqDefault = (Q) req.getDefaultInstanceForType();
    @SuppressWarnings("unchecked")
    R resDefault = (R) res.getDefaultInstanceForType();
    return MethodDescriptor.<Q, R>newBuilder()
        .setType(type)
        .setFullMethodName(MethodDescriptor.generateFullMethodName(svc.getFullName(), m.getName()))
        .setRequestMarshaller(ProtoUtils.marshaller(reqDefault))
        .setResponseMarshaller(ProtoUtils.marshaller(resDefault))
        .setSafe(m.getOptions().getIdempotencyLevel()
            == com.google.protobuf.DescriptorProtos.MethodOptions.IdempotencyLevel.NO_SIDE_EFFECTS)
        .build();
  }
}
