#include "control/preload.h"

#include <gtest/gtest.h>

namespace cudapool {
namespace {

TEST(Preload, CudapoolAloneWhenNothingIsPreloaded) {
  EXPECT_EQ("/lib/libcudapool.so", preload_with_cudapool(nullptr, "/lib/libcudapool.so"));
  EXPECT_EQ("/lib/libcudapool.so", preload_with_cudapool("", "/lib/libcudapool.so"));
  EXPECT_EQ("", preload_without_cudapool(nullptr));
}

TEST(Preload, WhatIsPreloadedStaysFirstInOrder) {
  EXPECT_EQ("/r/libasan.so.8:/j/libjemalloc.so:/lib/libcudapool.so",
            preload_with_cudapool("/r/libasan.so.8 /j/libjemalloc.so", "/lib/libcudapool.so"));
  EXPECT_EQ("/r/libtsan.so.2", preload_without_cudapool("/r/libtsan.so.2"));
}

TEST(Preload, AnOldCudapoolEntryIsReplacedNotRepeated) {
  EXPECT_EQ("/r/libasan.so.8:/new/libcudapool.so",
            preload_with_cudapool("/old/libcudapool.so:/r/libasan.so.8::", "/new/libcudapool.so"));
  EXPECT_EQ("/a.so:/b.so", preload_without_cudapool(":/a.so::/x/libcudapool.so /b.so "));
}

}  // namespace
}  // namespace cudapool
