from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Invalid: _ClassVar[Kind]
    Bool: _ClassVar[Kind]
    Int8: _ClassVar[Kind]
    Int16: _ClassVar[Kind]
    Int32: _ClassVar[Kind]
    Int64: _ClassVar[Kind]
    Uint8: _ClassVar[Kind]
    Uint16: _ClassVar[Kind]
    Uint32: _ClassVar[Kind]
    Uint64: _ClassVar[Kind]
    Float32: _ClassVar[Kind]
    Float64: _ClassVar[Kind]
    String: _ClassVar[Kind]
    CString: _ClassVar[Kind]
    Bytes: _ClassVar[Kind]
Invalid: Kind
Bool: Kind
Int8: Kind
Int16: Kind
Int32: Kind
Int64: Kind
Uint8: Kind
Uint16: Kind
Uint32: Kind
Uint64: Kind
Float32: Kind
Float64: Kind
String: Kind
CString: Kind
Bytes: Kind

class InfoRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "experimental", "serverVersion")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTAL_FIELD_NUMBER: _ClassVar[int]
    SERVERVERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    experimental: bool
    serverVersion: str
    def __init__(self, version: _Optional[str] = ..., experimental: _Optional[bool] = ..., serverVersion: _Optional[str] = ...) -> None: ...

class GadgetRunRequest(_message.Message):
    __slots__ = ("imageName", "paramValues", "args", "version", "logLevel", "timeout")
    class ParamValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    PARAMVALUES_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOGLEVEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    imageName: str
    paramValues: _containers.ScalarMap[str, str]
    args: _containers.RepeatedScalarFieldContainer[str]
    version: int
    logLevel: int
    timeout: int
    def __init__(self, imageName: _Optional[str] = ..., paramValues: _Optional[_Mapping[str, str]] = ..., args: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., logLevel: _Optional[int] = ..., timeout: _Optional[int] = ...) -> None: ...

class GadgetAttachRequest(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GadgetStopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GadgetControlRequest(_message.Message):
    __slots__ = ("runRequest", "stopRequest", "attachRequest")
    RUNREQUEST_FIELD_NUMBER: _ClassVar[int]
    STOPREQUEST_FIELD_NUMBER: _ClassVar[int]
    ATTACHREQUEST_FIELD_NUMBER: _ClassVar[int]
    runRequest: GadgetRunRequest
    stopRequest: GadgetStopRequest
    attachRequest: GadgetAttachRequest
    def __init__(self, runRequest: _Optional[_Union[GadgetRunRequest, _Mapping]] = ..., stopRequest: _Optional[_Union[GadgetStopRequest, _Mapping]] = ..., attachRequest: _Optional[_Union[GadgetAttachRequest, _Mapping]] = ...) -> None: ...

class GadgetEvent(_message.Message):
    __slots__ = ("type", "seq", "payload", "dataSourceID")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DATASOURCEID_FIELD_NUMBER: _ClassVar[int]
    type: int
    seq: int
    payload: bytes
    dataSourceID: int
    def __init__(self, type: _Optional[int] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., dataSourceID: _Optional[int] = ...) -> None: ...

class DataElement(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, payload: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GadgetData(_message.Message):
    __slots__ = ("node", "seq", "data")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    node: str
    seq: int
    data: DataElement
    def __init__(self, node: _Optional[str] = ..., seq: _Optional[int] = ..., data: _Optional[_Union[DataElement, _Mapping]] = ...) -> None: ...

class GadgetDataArray(_message.Message):
    __slots__ = ("node", "seq", "dataArray")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATAARRAY_FIELD_NUMBER: _ClassVar[int]
    node: str
    seq: int
    dataArray: _containers.RepeatedCompositeFieldContainer[DataElement]
    def __init__(self, node: _Optional[str] = ..., seq: _Optional[int] = ..., dataArray: _Optional[_Iterable[_Union[DataElement, _Mapping]]] = ...) -> None: ...

class Field(_message.Message):
    __slots__ = ("name", "fullName", "index", "payloadIndex", "offs", "size", "flags", "kind", "tags", "annotations", "parent", "order")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FULLNAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOADINDEX_FIELD_NUMBER: _ClassVar[int]
    OFFS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    fullName: str
    index: int
    payloadIndex: int
    offs: int
    size: int
    flags: int
    kind: Kind
    tags: _containers.RepeatedScalarFieldContainer[str]
    annotations: _containers.ScalarMap[str, str]
    parent: int
    order: int
    def __init__(self, name: _Optional[str] = ..., fullName: _Optional[str] = ..., index: _Optional[int] = ..., payloadIndex: _Optional[int] = ..., offs: _Optional[int] = ..., size: _Optional[int] = ..., flags: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., tags: _Optional[_Iterable[str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., parent: _Optional[int] = ..., order: _Optional[int] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("id", "name", "type", "fields", "tags", "annotations", "flags")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    type: int
    fields: _containers.RepeatedCompositeFieldContainer[Field]
    tags: _containers.RepeatedScalarFieldContainer[str]
    annotations: _containers.ScalarMap[str, str]
    flags: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., type: _Optional[int] = ..., fields: _Optional[_Iterable[_Union[Field, _Mapping]]] = ..., tags: _Optional[_Iterable[str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., flags: _Optional[int] = ...) -> None: ...

class Param(_message.Message):
    __slots__ = ("key", "description", "defaultValue", "typeHint", "title", "alias", "tags", "valueHint", "possibleValues", "isMandatory", "prefix", "alternativeKey")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULTVALUE_FIELD_NUMBER: _ClassVar[int]
    TYPEHINT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    VALUEHINT_FIELD_NUMBER: _ClassVar[int]
    POSSIBLEVALUES_FIELD_NUMBER: _ClassVar[int]
    ISMANDATORY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVEKEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    description: str
    defaultValue: str
    typeHint: str
    title: str
    alias: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    valueHint: str
    possibleValues: _containers.RepeatedScalarFieldContainer[str]
    isMandatory: bool
    prefix: str
    alternativeKey: str
    def __init__(self, key: _Optional[str] = ..., description: _Optional[str] = ..., defaultValue: _Optional[str] = ..., typeHint: _Optional[str] = ..., title: _Optional[str] = ..., alias: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., valueHint: _Optional[str] = ..., possibleValues: _Optional[_Iterable[str]] = ..., isMandatory: _Optional[bool] = ..., prefix: _Optional[str] = ..., alternativeKey: _Optional[str] = ...) -> None: ...

class GadgetInspectAddendum(_message.Message):
    __slots__ = ("contentType", "content")
    CONTENTTYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    contentType: str
    content: bytes
    def __init__(self, contentType: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ExtraInfo(_message.Message):
    __slots__ = ("data",)
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: GadgetInspectAddendum
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[GadgetInspectAddendum, _Mapping]] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.MessageMap[str, GadgetInspectAddendum]
    def __init__(self, data: _Optional[_Mapping[str, GadgetInspectAddendum]] = ...) -> None: ...

class GadgetInfo(_message.Message):
    __slots__ = ("name", "imageName", "dataSources", "annotations", "metadata", "params", "id", "extraInfo")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    DATASOURCES_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EXTRAINFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    imageName: str
    dataSources: _containers.RepeatedCompositeFieldContainer[DataSource]
    annotations: _containers.ScalarMap[str, str]
    metadata: bytes
    params: _containers.RepeatedCompositeFieldContainer[Param]
    id: str
    extraInfo: ExtraInfo
    def __init__(self, name: _Optional[str] = ..., imageName: _Optional[str] = ..., dataSources: _Optional[_Iterable[_Union[DataSource, _Mapping]]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., metadata: _Optional[bytes] = ..., params: _Optional[_Iterable[_Union[Param, _Mapping]]] = ..., id: _Optional[str] = ..., extraInfo: _Optional[_Union[ExtraInfo, _Mapping]] = ...) -> None: ...

class GetGadgetInfoRequest(_message.Message):
    __slots__ = ("paramValues", "imageName", "version", "flags", "requestExtraInfo")
    class ParamValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMVALUES_FIELD_NUMBER: _ClassVar[int]
    IMAGENAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    REQUESTEXTRAINFO_FIELD_NUMBER: _ClassVar[int]
    paramValues: _containers.ScalarMap[str, str]
    imageName: str
    version: int
    flags: int
    requestExtraInfo: bool
    def __init__(self, paramValues: _Optional[_Mapping[str, str]] = ..., imageName: _Optional[str] = ..., version: _Optional[int] = ..., flags: _Optional[int] = ..., requestExtraInfo: _Optional[bool] = ...) -> None: ...

class GetGadgetInfoResponse(_message.Message):
    __slots__ = ("gadgetInfo",)
    GADGETINFO_FIELD_NUMBER: _ClassVar[int]
    gadgetInfo: GadgetInfo
    def __init__(self, gadgetInfo: _Optional[_Union[GadgetInfo, _Mapping]] = ...) -> None: ...
