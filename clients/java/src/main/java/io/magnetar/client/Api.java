package io.magnetar.client;

import com.google.protobuf.Descriptors.ServiceDescriptor;
import io.grpc.MethodDescriptor;
import io.magnetar.container.v1.*;
import io.magnetar.file.v1.*;
import io.magnetar.image.v1.*;
import io.magnetar.sandbox.v1.*;

/** The methods of Magnetar's services that the client calls. */
final class Api {
  private Api() {}

  private static final ServiceDescriptor SANDBOX =
      SandboxProto.getDescriptor().findServiceByName("SandboxService");
  private static final ServiceDescriptor CONTAINER =
      ContainerProto.getDescriptor().findServiceByName("ContainerService");
  private static final ServiceDescriptor IMAGE =
      ImageProto.getDescriptor().findServiceByName("ImageService");
  private static final ServiceDescriptor FILE =
      FileProto.getDescriptor().findServiceByName("FileService");

  static final MethodDescriptor<ListKindsRequest, ListKindsResponse> LIST_KINDS =
      Rpc.method(SANDBOX, "ListKinds", ListKindsRequest.getDefaultInstance(), ListKindsResponse.getDefaultInstance());
  static final MethodDescriptor<CreateSandboxRequest, CreateSandboxResponse> CREATE_SANDBOX =
      Rpc.method(SANDBOX, "CreateSandbox", CreateSandboxRequest.getDefaultInstance(), CreateSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<StartSandboxRequest, StartSandboxResponse> START_SANDBOX =
      Rpc.method(SANDBOX, "StartSandbox", StartSandboxRequest.getDefaultInstance(), StartSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<DeleteSandboxRequest, DeleteSandboxResponse> DELETE_SANDBOX =
      Rpc.method(SANDBOX, "DeleteSandbox", DeleteSandboxRequest.getDefaultInstance(), DeleteSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<PauseSandboxRequest, PauseSandboxResponse> PAUSE_SANDBOX =
      Rpc.method(SANDBOX, "PauseSandbox", PauseSandboxRequest.getDefaultInstance(), PauseSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<ResumeSandboxRequest, ResumeSandboxResponse> RESUME_SANDBOX =
      Rpc.method(SANDBOX, "ResumeSandbox", ResumeSandboxRequest.getDefaultInstance(), ResumeSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<GetSandboxUsageRequest, GetSandboxUsageResponse> GET_SANDBOX_USAGE =
      Rpc.method(SANDBOX, "GetSandboxUsage", GetSandboxUsageRequest.getDefaultInstance(), GetSandboxUsageResponse.getDefaultInstance());
  static final MethodDescriptor<SetSandboxTimeoutRequest, SetSandboxTimeoutResponse> SET_SANDBOX_TIMEOUT =
      Rpc.method(SANDBOX, "SetSandboxTimeout", SetSandboxTimeoutRequest.getDefaultInstance(), SetSandboxTimeoutResponse.getDefaultInstance());
  static final MethodDescriptor<GetSandboxRequest, GetSandboxResponse> GET_SANDBOX =
      Rpc.method(SANDBOX, "GetSandbox", GetSandboxRequest.getDefaultInstance(), GetSandboxResponse.getDefaultInstance());
  static final MethodDescriptor<ListSandboxesRequest, ListSandboxesResponse> LIST_SANDBOXES =
      Rpc.method(SANDBOX, "ListSandboxes", ListSandboxesRequest.getDefaultInstance(), ListSandboxesResponse.getDefaultInstance());

  static final MethodDescriptor<WatchSandboxUsageRequest, WatchSandboxUsageResponse> WATCH_SANDBOX_USAGE =
      Rpc.method(SANDBOX, "WatchSandboxUsage", WatchSandboxUsageRequest.getDefaultInstance(), WatchSandboxUsageResponse.getDefaultInstance());
  static final MethodDescriptor<DialPortRequest, DialPortResponse> DIAL_PORT =
      Rpc.method(SANDBOX, "DialPort", DialPortRequest.getDefaultInstance(), DialPortResponse.getDefaultInstance());

  static final MethodDescriptor<WatchEventsRequest, WatchEventsResponse> WATCH_EVENTS =
      Rpc.method(SANDBOX, "WatchEvents", WatchEventsRequest.getDefaultInstance(), WatchEventsResponse.getDefaultInstance());

  static final MethodDescriptor<CreateContainerRequest, CreateContainerResponse> CREATE_CONTAINER =
      Rpc.method(CONTAINER, "CreateContainer", CreateContainerRequest.getDefaultInstance(), CreateContainerResponse.getDefaultInstance());
  static final MethodDescriptor<StartContainerRequest, StartContainerResponse> START_CONTAINER =
      Rpc.method(CONTAINER, "StartContainer", StartContainerRequest.getDefaultInstance(), StartContainerResponse.getDefaultInstance());
  static final MethodDescriptor<GetContainerRequest, GetContainerResponse> GET_CONTAINER =
      Rpc.method(CONTAINER, "GetContainer", GetContainerRequest.getDefaultInstance(), GetContainerResponse.getDefaultInstance());
  static final MethodDescriptor<ListContainersRequest, ListContainersResponse> LIST_CONTAINERS =
      Rpc.method(CONTAINER, "ListContainers", ListContainersRequest.getDefaultInstance(), ListContainersResponse.getDefaultInstance());
  static final MethodDescriptor<DeleteContainerRequest, DeleteContainerResponse> DELETE_CONTAINER =
      Rpc.method(CONTAINER, "DeleteContainer", DeleteContainerRequest.getDefaultInstance(), DeleteContainerResponse.getDefaultInstance());
  static final MethodDescriptor<ExecProcessRequest, ExecProcessResponse> EXEC_PROCESS =
      Rpc.method(CONTAINER, "ExecProcess", ExecProcessRequest.getDefaultInstance(), ExecProcessResponse.getDefaultInstance());
  static final MethodDescriptor<SignalProcessRequest, SignalProcessResponse> SIGNAL_PROCESS =
      Rpc.method(CONTAINER, "SignalProcess", SignalProcessRequest.getDefaultInstance(), SignalProcessResponse.getDefaultInstance());
  static final MethodDescriptor<WaitProcessRequest, WaitProcessResponse> WAIT_PROCESS =
      Rpc.method(CONTAINER, "WaitProcess", WaitProcessRequest.getDefaultInstance(), WaitProcessResponse.getDefaultInstance());
  static final MethodDescriptor<WriteStdinRequest, WriteStdinResponse> WRITE_STDIN =
      Rpc.method(CONTAINER, "WriteStdin", WriteStdinRequest.getDefaultInstance(), WriteStdinResponse.getDefaultInstance());
  static final MethodDescriptor<CloseStdinRequest, CloseStdinResponse> CLOSE_STDIN =
      Rpc.method(CONTAINER, "CloseStdin", CloseStdinRequest.getDefaultInstance(), CloseStdinResponse.getDefaultInstance());
  static final MethodDescriptor<AttachOutputRequest, AttachOutputResponse> ATTACH_OUTPUT =
      Rpc.method(CONTAINER, "AttachOutput", AttachOutputRequest.getDefaultInstance(), AttachOutputResponse.getDefaultInstance());

  static final MethodDescriptor<ImportImageRequest, ImportImageResponse> IMPORT_IMAGE =
      Rpc.method(IMAGE, "ImportImage", ImportImageRequest.getDefaultInstance(), ImportImageResponse.getDefaultInstance());
  static final MethodDescriptor<ListImagesRequest, ListImagesResponse> LIST_IMAGES =
      Rpc.method(IMAGE, "ListImages", ListImagesRequest.getDefaultInstance(), ListImagesResponse.getDefaultInstance());

  static final MethodDescriptor<StatRequest, StatResponse> FILE_STAT =
      Rpc.method(FILE, "Stat", StatRequest.getDefaultInstance(), StatResponse.getDefaultInstance());
  static final MethodDescriptor<ListRequest, ListResponse> FILE_LIST =
      Rpc.method(FILE, "List", ListRequest.getDefaultInstance(), ListResponse.getDefaultInstance());
  static final MethodDescriptor<ReadRequest, ReadResponse> FILE_READ =
      Rpc.method(FILE, "Read", ReadRequest.getDefaultInstance(), ReadResponse.getDefaultInstance());
  static final MethodDescriptor<WriteRequest, WriteResponse> FILE_WRITE =
      Rpc.method(FILE, "Write", WriteRequest.getDefaultInstance(), WriteResponse.getDefaultInstance());
  static final MethodDescriptor<MakeDirRequest, MakeDirResponse> FILE_MAKE_DIR =
      Rpc.method(FILE, "MakeDir", MakeDirRequest.getDefaultInstance(), MakeDirResponse.getDefaultInstance());
  static final MethodDescriptor<RemoveRequest, RemoveResponse> FILE_REMOVE =
      Rpc.method(FILE, "Remove", RemoveRequest.getDefaultInstance(), RemoveResponse.getDefaultInstance());
  static final MethodDescriptor<RenameRequest, RenameResponse> FILE_RENAME =
      Rpc.method(FILE, "Rename", RenameRequest.getDefaultInstance(), RenameResponse.getDefaultInstance());
  static final MethodDescriptor<WatchRequest, WatchResponse> FILE_WATCH =
      Rpc.method(FILE, "Watch", WatchRequest.getDefaultInstance(), WatchResponse.getDefaultInstance());
  static final MethodDescriptor<DownloadTarRequest, DownloadTarResponse> FILE_DOWNLOAD_TAR =
      Rpc.method(FILE, "DownloadTar", DownloadTarRequest.getDefaultInstance(), DownloadTarResponse.getDefaultInstance());
  static final MethodDescriptor<UploadTarRequest, UploadTarResponse> FILE_UPLOAD_TAR =
      Rpc.method(FILE, "UploadTar", UploadTarRequest.getDefaultInstance(), UploadTarResponse.getDefaultInstance());
}
