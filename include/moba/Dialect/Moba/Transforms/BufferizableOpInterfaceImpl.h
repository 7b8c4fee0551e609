//===- BufferizableOpInterfaceImpl.h - moba ops on buffers ------*- C++ -*-===//
//
// Part of moba-mlir. One-shot bufferization of the moba ops that exist on
// buffers: moba.grouped_block_attention becomes its memref form, writing
// its inits in place.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_DIALECT_MOBA_TRANSFORMS_BUFFERIZABLEOPINTERFACEIMPL_H
#define MOBA_DIALECT_MOBA_TRANSFORMS_BUFFERIZABLEOPINTERFACEIMPL_H

namespace mlir {
class DialectRegistry;
namespace moba {

void registerBufferizableOpInterfaceExternalModels(DialectRegistry &registry);

} // namespace moba
} // namespace mlir

#endif // MOBA_DIALECT_MOBA_TRANSFORMS_BUFFERIZABLEOPINTERFACEIMPL_H
