// FreeIndex (free_index.h): best fit by (size, address), with recycled nodes.
#include "allocator/free_index.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "alloc_counter.h"

namespace cudapool {
namespace {

struct FakeBlock {
  std::uintptr_t addr;
  std::size_t size;
};

TEST(FreeIndex, EmptyIndexHasNoFit) {
  FreeIndex<FakeBlock> index;
  EXPECT_TRUE(index.empty());
  EXPECT_EQ(index.best_fit(1), nullptr);
}

TEST(FreeIndex, PicksTheSmallestBlockThatFits) {
  FreeIndex<FakeBlock> index;
  FakeBlock big{0x1000, 4096}, small{0x8000, 1024}, mid{0x20000, 2048};
  index.insert(&big);
  index.insert(&small);
  index.insert(&mid);
  EXPECT_EQ(index.size(), 3u);
  EXPECT_EQ(index.best_fit(512), &small);
  EXPECT_EQ(index.best_fit(1024), &small);
  EXPECT_EQ(index.best_fit(1536), &mid);
  EXPECT_EQ(index.best_fit(2048), &mid);
  EXPECT_EQ(index.best_fit(2560), &big);
  EXPECT_EQ(index.best_fit(4096), &big);
  EXPECT_EQ(index.best_fit(4608), nullptr);
}

TEST(FreeIndex, TiesGoToTheLowestAddress) {
  FreeIndex<FakeBlock> index;
  FakeBlock high{0x9000, 1024}, low{0x3000, 1024}, middle{0x5000, 1024};
  index.insert(&high);
  index.insert(&low);
  index.insert(&middle);
  EXPECT_EQ(index.best_fit(1024), &low);
  index.erase(&low);
  EXPECT_EQ(index.best_fit(1024), &middle);
  index.erase(&middle);
  EXPECT_EQ(index.best_fit(1024), &high);
}

TEST(FreeIndex, EraseRemovesExactlyThatBlock) {
  FreeIndex<FakeBlock> index;
  FakeBlock a{0x1000, 1024}, b{0x2000, 1024};
  index.insert(&a);
  index.insert(&b);
  index.erase(&b);
  EXPECT_EQ(index.size(), 1u);
  EXPECT_EQ(index.best_fit(1024), &a);
  index.erase(&a);
  EXPECT_TRUE(index.empty());
}

TEST(FreeIndex, ClearEmptiesTheIndex) {
  FreeIndex<FakeBlock> index;
  FakeBlock a{0x1000, 1024};
  index.insert(&a);
  index.clear();
  EXPECT_TRUE(index.empty());
  EXPECT_EQ(index.best_fit(512), nullptr);
}

TEST(FreeIndex, RandomOperationsMatchAnOrderedModel) {
  std::mt19937_64 rng(7);
  std::vector<FakeBlock> blocks(400);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    blocks[i] = FakeBlock{0x100000 + i * 0x10000, (1 + rng() % 32) * 512};
  FreeIndex<FakeBlock> index;
  std::set<std::pair<std::size_t, std::uintptr_t>> model;
  std::vector<bool> in(blocks.size(), false);
  for (int step = 0; step < 20000; ++step) {
    std::size_t i = rng() % blocks.size();
    if (in[i]) {
      index.erase(&blocks[i]);
      model.erase({blocks[i].size, blocks[i].addr});
    } else {
      index.insert(&blocks[i]);
      model.insert({blocks[i].size, blocks[i].addr});
    }
    in[i] = !in[i];
    std::size_t want = (1 + rng() % 33) * 512;
    auto it = model.lower_bound({want, 0});
    FakeBlock* fit = index.best_fit(want);
    ASSERT_EQ(index.size(), model.size());
    if (it == model.end()) {
      ASSERT_EQ(fit, nullptr) << "step " << step;
    } else {
      ASSERT_NE(fit, nullptr) << "step " << step;
      ASSERT_EQ(fit->size, it->first) << "step " << step;
      ASSERT_EQ(fit->addr, it->second) << "step " << step;
    }
  }
}

TEST(FreeIndex, SteadyStateInsertEraseAllocatesNothing) {
  FreeIndex<FakeBlock> index;
  std::vector<FakeBlock> blocks(64);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    blocks[i] = FakeBlock{0x1000 + i * 0x1000, 512};
  for (FakeBlock& b : blocks)
    index.insert(&b);  // warm up: the nodes exist now
  for (FakeBlock& b : blocks)
    index.erase(&b);
  test::HostAllocationCounter counter;
  for (int round = 0; round < 100; ++round) {
    for (FakeBlock& b : blocks)
      index.insert(&b);
    for (FakeBlock& b : blocks)
      index.erase(&b);
  }
  EXPECT_EQ(counter.count(), 0u);
}

}  // namespace
}  // namespace cudapool
